#!/usr/bin/env bash
# The whole 64x experiment for one seed and all three variants (global, local, dsa) on the 2-core CPU, with
# its wall time: two processes side by side, one per core, balanced by their measured CPU cost (dsa alone
# ~ global + local), then collect. Writes ROOT/seedSEED/wall.json, which collect puts into the seed's file.
#
#   benchmarks/extension_64x_seed.sh SEED [ROOT]     (ROOT: runs/ext64)
# then `python -m benchmarks.extension_64x --seeds=0,1,2 --stages=report` merges the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:?usage: benchmarks/extension_64x_seed.sh SEED [ROOT]}
root=${2:-runs/ext64}
start=$(date +%s)
python -m benchmarks.extension_64x --root="$root" --seeds="$seed" --variants=dsa --stages=train,eval,cost &
dsa=$!
python -m benchmarks.extension_64x --root="$root" --seeds="$seed" --variants=global,local --stages=train,eval,cost
wait "$dsa"
end=$(date +%s)
mkdir -p "$root/seed$seed"
printf '{"seed": %d, "wall_s": %d, "variants": ["global", "local", "dsa"], "processes": 2, "start": "%s"}\n' \
  "$seed" "$((end - start))" "$(date -u -d "@$start" +%FT%TZ)" > "$root/seed$seed/wall.json"
python -m benchmarks.extension_64x --root="$root" --seeds="$seed" --stages=collect
echo "seed $seed: $((end - start)) s wall for global, local and dsa"
