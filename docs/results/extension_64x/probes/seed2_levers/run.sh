#!/usr/bin/env bash
# Levers on local/global seed 2's 8x step (it lost passkey there: 51 / 33% at 128 / 1024), from the recipe's
# base run (runs/ext64/seed2/local/base): each lever replaces 8x_rand, then the recipe's 8x stage follows, and
# passkey is read at 128 / 512 / 1024 (100 prompts each). Run from the repository root; LEVER is one of
# steps1600 (8x_rand twice as long) | stride3 (positions advance by 1-3 per token) | passkey50 (half the
# 8x_rand rows passkey episodes and 30% MQAR, the 64x stage's mix, instead of the base's 20% / 55%) |
# steps3200 (steps1600's 8x_rand continued for 1600 more steps, on another data order: --config.seed=3; run
# steps1600 first).
#
# local_lg is not an 8x_rand lever but the variant with the layers swapped ("LG": local layer 0, global
# layer 1; configs/extend_64x.py), trained from its own base through the recipe's chain, then read at 128
# (base) and 128 / 512 / 1024 (8x), with its copy heads.
#
# basejit continues seed 2's local base for 1000 steps at L0 on randomised positions (position stride 2, lr 3e-4
# constant: the 8x_rand stage's jitter before any RoPE change), then runs the recipe's 8x_rand and 8x from it
# (read at 128 / 512 / 1024), then its 16x, 32x and 64x (read at every length).
#
# basejit_64x (session 8; run basejit first) reads basejit's 64x read at YaRN temperature 1.6, then trains its
# 64x stage longer: 200 steps from its 32x, then three more 200-step runs each restoring the one before (data
# seeds 3, 4, 5), each read at 128 / 1024 / (4096 /) 8192. dsa_warm64 puts V3.2's dense warm-up (50
# indexer-only steps at 8192) before seed 2's dsa_rope 64x stage (session 8's dsa, an indexer with RoPE);
# dsa_64x300 continues that 64x run for 200 more steps (data seed 3). Both are read at 1024 / 8192. dsa_nope
# (session 8's name for today's dsa: an indexer without RoPE) trains the dsa chain for seed 2 and reads its
# 64x stage at 1024 / 4096 / 8192 with the indexer's recall, then dsa_digit_recall.py on it beside
# dsa_rope's (dsa_digit_recall.json keeps session 8's run paths: runs/.../dsa is today's dsa_rope,
# runs/.../dsa_nope today's dsa).
#
# Session 9, on local/global seed 2's recipe-v4 chain (runs/ext64/seed2/local): cool200 continues its 64x run
# (600 steps at the constant rate) for 200 steps decaying linearly to 0 (data seed 3), read at 128 / 256 /
# 1024 / 4096 / 8192; br2000 continues its base_rand (1000 steps, constant rate) to 2000 steps, then trains
# the recipe's 8x_rand ... 32x and a 64x stage of 800 steps whose last 200 decay to 0 (schedule wsd), read at
# every length. v5_400 continues recipe v5's 64x run (800 steps, the last 200 decaying) for 400 more steps,
# 200 at the constant rate then 200 decaying to 0, read at 128 / 256 / 1024 / 4096 / 8192.
#
# Session 10, on recipe v5's 64x runs (moved to runs/ext64_v5 when recipe v6 retrained them): logn_read reads
# v5's local and global 64x models with log-n attention (model.logn_attention L: a global layer's logits at
# position p >= L scaled by log(p + 1) / log L), no training, at 4096 / 8192; whole400 continues v5's local
# 64x run for 400 steps (200 constant, 200 decaying, as v5_400) on whole-row episodes only
# (data.episode_min_len 8192); logn1024 and global_logn1024 retrain the local / global 64x stage from the
# recipe's 32x with log-n attention from 1024; whole_rate trains local's 64x stage from 32x with
# data.passkey_whole_rate 0.25 and 0.5 (that share of the passkey rows one whole-row prompt).
set -euo pipefail
lever=${1:?usage: run.sh steps1600|stride3|passkey50|steps3200|local_lg|basejit|basejit_64x|dsa_warm64|dsa_64x300|dsa_nope|cool200|br2000|v5_400|logn_read|whole400|logn1024|global_logn1024|whole_rate}
quick=(--tasks=passkey --passkey_samples=20 --tag=quick)
cool=(--config.optim.schedule=wsd --config.optim.min_lr_ratio=0.0)  # linear decay to 0
lengths=128,256,512,1024,2048,4096,8192
v5=runs/ext64_v5/seed2
v5_local=(--config.model.logn_attention=0 --config.data.passkey_whole_rate=0.0)  # recipe v5's local 64x stage
if [ "$lever" = logn_read ]; then
  for L in 1024 2048 4096; do
    python -m eval --workdir=$v5/local/64x_yarn --lengths=4096,8192 "${quick[@]:0:2}" --tag=logn$L \
      --config.model.logn_attention=$L
  done
  for L in 1024 4096; do
    python -m eval --workdir=$v5/global/64x_yarn --lengths=8192 "${quick[@]:0:2}" --tag=logn$L \
      --config.model.logn_attention=$L
  done
  exit
fi
if [ "$lever" = whole400 ]; then
  root=runs/probe_s2local/whole400
  python train.py --config=configs/extend_64x.py:64x,local,yarn --workdir=$root --config.seed=3 \
    --config.init_from=$v5/local/64x_yarn --config.num_steps=400 --config.checkpoint.every=400 \
    --config.eval_every=400 --config.optim.decay_fraction=0.5 --config.data.episode_min_len=8192 "${v5_local[@]}" \
    > $root.log 2>&1
  python -m eval --workdir=$root --lengths=128,256,1024,4096,8192 "${quick[@]}"
  exit
fi
if [ "$lever" = logn1024 ] || [ "$lever" = global_logn1024 ]; then
  variant=local tasks=passkey
  [ "$lever" = global_logn1024 ] && variant=global tasks=passkey,mqar
  root=runs/probe_s2local/$lever
  python train.py --config=configs/extend_64x.py:64x,$variant,yarn --workdir=$root --config.seed=2 \
    --config.init_from=runs/ext64/seed2/$variant/32x_yarn "${v5_local[@]}" --config.model.logn_attention=1024 \
    > $root.log 2>&1
  python -m eval --workdir=$root --lengths=128,256,1024,4096,8192 --tasks=$tasks --passkey_samples=20 \
    --mqar_samples=16 --tag=quick
  exit
fi
if [ "$lever" = whole_rate ]; then
  for r in 0.25 0.5; do
    root=runs/probe_s2local/whole_rate$r
    python train.py --config=configs/extend_64x.py:64x,local,yarn --workdir=$root --config.seed=2 \
      --config.init_from=runs/ext64/seed2/local/32x_yarn "${v5_local[@]}" --config.data.passkey_whole_rate=$r \
      > $root.log 2>&1
    python -m eval --workdir=$root --lengths=128,256,1024,4096,8192 "${quick[@]}"
  done
  exit
fi
if [ "$lever" = cool200 ]; then
  root=runs/probe_s2local/cool200
  python train.py --config=configs/extend_64x.py:64x,local,yarn --workdir=$root --config.seed=3 \
    --config.init_from=runs/ext64/seed2/local/64x_yarn --config.num_steps=200 --config.checkpoint.every=200 \
    --config.eval_every=200 "${cool[@]}" --config.optim.decay_fraction=1.0 --config.optim.warmup_steps=0 \
    > $root.log 2>&1
  python -m eval --workdir=$root --lengths=128,256,1024,4096,8192 "${quick[@]}"
  exit
fi
if [ "$lever" = v5_400 ]; then  # recipe v5's 64x run continued: 400 steps, 200 at 3e-4 then 200 decaying to 0
  root=runs/probe_s2local/v5_400
  python train.py --config=configs/extend_64x.py:64x,local,yarn --workdir=$root --config.seed=3 \
    --config.init_from=runs/ext64/seed2/local/64x_yarn --config.num_steps=400 --config.checkpoint.every=400 \
    --config.eval_every=400 --config.optim.decay_fraction=0.5 > $root.log 2>&1
  python -m eval --workdir=$root --lengths=128,256,1024,4096,8192 "${quick[@]}"
  exit
fi
if [ "$lever" = br2000 ]; then
  root=runs/probe_s2local/br2000
  mkdir -p $root && cp -r runs/ext64/seed2/local/base_rand $root/  # constant rate: resuming to 2000 = a 2000-step run
  python train.py --config=configs/extend_64x.py:base_rand,local --workdir=$root/base_rand --config.seed=2 \
    --config.num_steps=2000 --config.checkpoint.every=1000 --config.eval_every=1000 > $root.base_rand.log 2>&1
  prev=$root/base_rand
  for st in 8x_rand 8x 16x 32x 64x; do
    extra=()
    if [ $st = 64x ]; then
      extra=(--config.num_steps=800 --config.checkpoint.every=800 --config.eval_every=800 "${cool[@]}"
             --config.optim.decay_fraction=0.25)
    fi
    python train.py --config=configs/extend_64x.py:$st,local,yarn --workdir=$root/${st}_yarn --config.seed=2 \
      --config.init_from=$prev "${extra[@]}" > $root.$st.log 2>&1
    prev=$root/${st}_yarn
  done
  python -m eval --workdir=$root/64x_yarn --lengths=$lengths --tasks=passkey,mqar --passkey_samples=20 \
    --mqar_samples=16 --tag=quick
  exit
fi
if [ "$lever" = basejit_64x ]; then
  root=runs/probe_s2local/basejit
  python -m eval --workdir=$root/64x_yarn --lengths=128,1024,8192 "${quick[@]:0:2}" --tag=t1.6 \
    --config.model.rope_scaling.attention_factor=1.6
  prev=$root/32x_yarn
  for n in 200:2 400:3 600:4 800:5; do
    python train.py --config=configs/extend_64x.py:64x,local,yarn --workdir=$root/64x${n%:*}_yarn \
      --config.seed=${n#*:} --config.init_from=$prev --config.num_steps=200 --config.checkpoint.every=200 \
      --config.eval_every=200 > $root.64x${n%:*}.log 2>&1
    prev=$root/64x${n%:*}_yarn
    python -m eval --workdir=$prev --lengths=128,1024,4096,8192 "${quick[@]}"
  done
  exit
fi
if [ "$lever" = dsa_nope ]; then
  python -m benchmarks.extension_64x --seeds=2 --variants=dsa --stages=train
  python -m eval --workdir=runs/ext64/seed2/dsa/64x_yarn --lengths=1024,4096,8192 \
    --tasks=passkey,mqar,indexer_recall --passkey_samples=20 --mqar_samples=16 --tag=quick
  python docs/results/extension_64x/probes/seed2_levers/dsa_digit_recall.py runs/ext64/seed2/dsa_rope/64x_yarn \
    runs/ext64/seed2/dsa/64x_yarn@quick
  exit
fi
if [ "$lever" = dsa_warm64 ] || [ "$lever" = dsa_64x300 ]; then
  root=runs/probe_s2dsa
  dsa=runs/ext64/seed2/dsa_rope
  if [ "$lever" = dsa_warm64 ]; then
    python train.py --config=configs/extend_64x.py:64x,dsa_rope,yarn --workdir=$root/64x_warm --config.seed=2 \
      --config.init_from=$dsa/32x_yarn --config.model.dsa_phase=dense_warmup --config.num_steps=50 \
      --config.checkpoint.every=50 --config.eval_every=50 > $root.64x_warm.log 2>&1
    python train.py --config=configs/extend_64x.py:64x,dsa_rope,yarn --workdir=$root/64x_yarn --config.seed=2 \
      --config.init_from=$root/64x_warm > $root.64x.log 2>&1
    python -m eval --workdir=$root/64x_yarn --lengths=1024,8192 --tasks=passkey,indexer_recall \
      --passkey_samples=20 --mqar_samples=16 --tag=quick
  else
    python train.py --config=configs/extend_64x.py:64x,dsa_rope,yarn --workdir=$root/64x300_yarn --config.seed=3 \
      --config.init_from=$dsa/64x_yarn --config.num_steps=200 --config.checkpoint.every=200 \
      --config.eval_every=200 > $root.64x300.log 2>&1
    python -m eval --workdir=$root/64x300_yarn --lengths=1024,8192 --tasks=passkey,mqar --passkey_samples=20 \
      --mqar_samples=16 --tag=quick
  fi
  exit
fi
if [ "$lever" = basejit ]; then
  root=runs/probe_s2local/basejit
  python train.py --config=configs/extend_64x.py:base,local --workdir=$root/base --config.seed=2 \
    --config.init_from=runs/ext64/seed2/local/base --config.data.position_stride=2 --config.num_steps=1000 \
    --config.checkpoint.every=1000 --config.eval_every=1000 --config.optim.learning_rate=3e-4 \
    --config.optim.schedule=constant --config.optim.warmup_steps=10 > $root.base.log 2>&1
  python -m eval --workdir=$root/base --lengths=128 --tasks=passkey,mqar --passkey_samples=20 --mqar_samples=16 \
    --tag=quick
  prev=$root/base
  for st in 8x_rand 8x 16x 32x 64x; do
    python train.py --config=configs/extend_64x.py:$st,local,yarn --workdir=$root/${st}_yarn --config.seed=2 \
      --config.init_from=$prev > $root.$st.log 2>&1
    prev=$root/${st}_yarn
  done
  python -m eval --workdir=$root/8x_yarn --lengths=128,512,1024 --tasks=passkey,mqar --passkey_samples=20 \
    --mqar_samples=16 --tag=quick
  python -m eval --workdir=$root/64x_yarn --lengths=128,256,512,1024,2048,4096,8192 --tasks=passkey,mqar \
    --passkey_samples=20 --mqar_samples=16 --tag=quick
  exit
fi
if [ "$lever" = local_lg ]; then
  python -m benchmarks.extension_64x --seeds=2 --variants=local_lg --stages=train
  python -m eval --workdir=runs/ext64/seed2/local_lg/base --lengths=128 --tasks=passkey,mqar --passkey_samples=20 \
    --mqar_samples=16 --tag=quick
  python -m eval --workdir=runs/ext64/seed2/local_lg/8x_yarn --lengths=128,512,1024 --tasks=passkey,mqar \
    --passkey_samples=20 --mqar_samples=16 --tag=quick
  python -m benchmarks.passkey_copy_heads --runs=runs/ext64/seed2/local_lg/base,runs/ext64/seed2/local_lg/8x_yarn \
    --gather_window=32 --json=docs/results/extension_64x/probes/seed2_levers/copy_heads_local_lg.json
  exit
fi
base=runs/ext64/seed2/local/base
root=runs/probe_s2local/$lever
case $lever in
  steps1600) extra=(--config.num_steps=1600 --config.checkpoint.every=1600 --config.eval_every=1600) ;;
  stride3) extra=(--config.data.position_stride=3) ;;
  passkey50) extra=(--config.data.passkey_rate=0.5 --config.data.mqar_rate=0.3) ;;
  steps3200) base=runs/probe_s2local/steps1600/8x_rand_yarn
             extra=(--config.num_steps=1600 --config.checkpoint.every=1600 --config.eval_every=1600 --config.seed=3) ;;
  *) echo "unknown lever $lever"; exit 1 ;;
esac
python train.py --config=configs/extend_64x.py:8x_rand,local,yarn --workdir=$root/8x_rand_yarn --config.seed=2 \
  --config.init_from=$base "${extra[@]}" > $root.8x_rand.log 2>&1
python train.py --config=configs/extend_64x.py:8x,local,yarn --workdir=$root/8x_yarn --config.seed=2 \
  --config.init_from=$root/8x_rand_yarn > $root.8x.log 2>&1
python -m eval --workdir=$root/8x_yarn --lengths=128,512,1024 --tasks=passkey --passkey_samples=20 > $root.eval.log 2>&1
