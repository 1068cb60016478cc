#!/usr/bin/env bash
# Session 12: why DSA seed 5's 64x model (recipe v7) read 37% passkey at 256, and what repairs it. Seed 5 was
# trained by `benchmarks/extension_64x_seed.sh 5 runs/ext64_s5 docs/results/extension_64x/probes/seed5_whole`
# (v7); its v7 64x run was then moved to runs/ext64_s5_v7/seed5/dsa/64x_yarn. `read32x` reads seed 5's 32x
# model at 128-512; each other lever continues that 32x model with configs/extend_64x.py's 64x stage
# (recipe v7's settings for DSA: 100 steps, lr 3e-4 constant, episodes from 8 L0) and overrides, then reads
# it at 128-8192 (100 passkey prompts and 16 MQAR rows per length). Run from the repository root, then
# gather_64x.py.
#   ep2          episodes from 2 L0
#   ep2_wsd      episodes from 2 L0, the last 25 steps decaying linearly to 0
#   ep2_wsd200   episodes from 2 L0, 200 steps, the last 50 decaying to 0   (recipe v8's DSA_64X)
set -euo pipefail
lever=${1:?usage: levers_64x.sh read32x|ep2|ep2_wsd|ep2_wsd200}
from=runs/ext64_s5/seed5/dsa/32x_yarn
if [ "$lever" = read32x ]; then
  python -m eval --workdir=$from --lengths=128,256,512 --tasks=passkey --passkey_samples=20 --tag=probe
  exit
fi
# every lever sets the stage's steps, shortest episode and schedule itself: with recipe v8 the config's
# defaults for DSA are ep2_wsd200's
steps() { echo --config.num_steps=$1 --config.eval_every=$1 --config.checkpoint.every=$1; }
constant=(--config.optim.schedule=constant)
wsd=(--config.optim.schedule=wsd --config.optim.decay_fraction=0.25 --config.optim.min_lr_ratio=0.0)
case $lever in
  ep2) args=($(steps 100) "${constant[@]}") ;;
  ep2_wsd) args=($(steps 100) "${wsd[@]}") ;;
  ep2_wsd200) args=($(steps 200) "${wsd[@]}") ;;
  *) echo "unknown lever $lever" >&2; exit 2 ;;
esac
wd=runs/s5_probe/dsa_64x_$lever
python train.py --config=configs/extend_64x.py:64x,dsa,yarn --workdir=$wd --config.seed=5 --config.init_from=$from \
  --config.data.episode_min_len=256 "${args[@]}"
python -m eval --workdir=$wd --lengths=128,256,512,1024,2048,4096,8192 --tasks=perplexity,passkey,mqar \
  --ppl_documents=8 --passkey_samples=20 --mqar_samples=16
