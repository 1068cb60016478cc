#!/usr/bin/env bash
# The whole 64x experiment for one seed and all three variants (global, local, dsa) on the 2-core CPU, with
# its wall time: one process per variant, all three side by side (the kernel shares the two cores among
# them, so the wall time is about their summed CPU time over two, as long as no one variant takes longer
# than that alone: measured per stage in each variant's timing.json), then collect. Writes
# ROOT/seedSEED/wall.json, which collect puts into the seed's file RESULTS/seedSEED.json.
#
#   benchmarks/extension_64x_seed.sh SEED [ROOT] [RESULTS]   (ROOT: runs/ext64; RESULTS:
#                                                             docs/results/extension_64x, the report's seeds)
# A seed that is only a check (not one of the report's) goes to its own RESULTS folder, e.g. under probes/.
# then `python -m benchmarks.extension_64x --seeds=0,1,2 --stages=report` merges the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:?usage: benchmarks/extension_64x_seed.sh SEED [ROOT] [RESULTS]}
root=${2:-runs/ext64}
results=${3:-docs/results/extension_64x}
variants=(global local dsa)
start=$(date +%s)
pids=()
for v in "${variants[@]}"; do
  python -m benchmarks.extension_64x --root="$root" --seeds="$seed" --variants="$v" --stages=train,eval,cost &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p"  # set -e: a failed variant stops the script here, before a wall time is written
done
end=$(date +%s)
mkdir -p "$root/seed$seed"
printf '{"seed": %d, "wall_s": %d, "variants": ["global", "local", "dsa"], "processes": %d, "start": "%s", "commit": "%s"}\n' \
  "$seed" "$((end - start))" "${#variants[@]}" "$(date -u -d "@$start" +%FT%TZ)" "$(git rev-parse --short HEAD)" \
  > "$root/seed$seed/wall.json"
python -m benchmarks.extension_64x --root="$root" --seeds="$seed" --stages=collect --results="$results"
echo "seed $seed: $((end - start)) s wall for global, local and dsa"
