#!/usr/bin/env bash
# Session 13: why DSA seed 7's passkey fell to 3-12% at every length (recipe v8), and what keeps it. Seed 7
# was trained by `benchmarks/extension_64x_seed.sh 7 ROOT docs/results/extension_64x/probes/seed7_unseen`
# on a fresh clone; ROOT/seed7/dsa holds its runs. Its DSA base read 100% at 128; after 8x_rand the key's
# first digit was a fixed guess ("1"), and the 64x indexer's top-32 held that digit for 73% of the prompts
# at 128 and 0-9% from 512 on (digits 2-5: 100%). Each lever continues seed 7's DSA base through the 8x
# step with configs/extend_64x.py's stages and overrides, then reads passkey (20 prompts per depth) and the
# indexer's recall at 128 / 256 / 1024. Run from the repository root, then gather_8x.py.
#   readbase     seed 7's own DSA base, read
#   read8x_rand  seed 7's own 8x_rand model, read (where the digit was lost)
#   pk8x         8x_rand and 8x with passkey 0.5 / MQAR 0.3 of the rows (the 64x stage's mix)
#   base2        local/global's L0 stages first (base_passkey, then base_rand), then 8x_rand and 8x
set -euo pipefail

root=${1}; lever=${2:?usage: levers_8x.sh ROOT readbase|read8x_rand|pk8x|base2}
from=$root/seed7/dsa
out=$root/probe8x/$lever
read() {  # the lever's last model at 128 / 256 / 1024
  python -m eval --workdir=$1 --lengths=128,256,1024 --tasks=passkey,mqar,indexer_recall --passkey_samples=20 \
    --mqar_samples=16 --tag=probe
}
stage() {  # stage, init_from, workdir, overrides...
  local s=$1 init=$2 wd=$3; shift 3
  python train.py --config=configs/extend_64x.py:$s,dsa,yarn --workdir=$wd --config.seed=7 --config.init_from=$init "$@" \
    > $wd.log 2>&1
}
mkdir -p $out
case $lever in
  readbase) read $from/base ;;
  read8x_rand) read $from/8x_rand_yarn ;;
  pk8x)
    mix=(--config.data.passkey_rate=0.5 --config.data.mqar_rate=0.3)
    stage 8x_rand $from/base $out/8x_rand "${mix[@]}"
    stage 8x $out/8x_rand $out/8x "${mix[@]}"
    read $out/8x ;;
  base2)
    stage base_passkey $from/base $out/base_passkey
    stage base_rand $out/base_passkey $out/base_rand
    stage 8x_rand $out/base_rand $out/8x_rand
    stage 8x $out/8x_rand $out/8x
    read $out/8x ;;
  *) echo "unknown lever $lever" >&2; exit 2 ;;
esac
