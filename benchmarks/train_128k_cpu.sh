#!/bin/bash
# The public 128K commands of issue 14 item 4 for one attention pattern (G, L or D), with CPU time:
# 2 steps + checkpoint, resume 1 step, perplexity at 131072. Usage: benchmarks/train_128k_cpu.sh L > log
P=$1; W=runs/128k_$P
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
common="--config=configs/decoder_tiny.py:tiny --config.data.seq_len=131072 --config.model.max_len=131072 --config.data.batch_size=1 --config.model.remat=full --config.loss_chunk_tokens=8192 --config.model.attention_pattern=$P --config.mesh.data=1"
/usr/bin/time -f "TIME train2 wall %e s user %U s sys %S s maxrss %M KB" nice -n 5 python train.py $common --workdir=$W
/usr/bin/time -f "TIME resume1 wall %e s user %U s sys %S s maxrss %M KB" nice -n 5 python train.py $common --config.num_steps=3 --workdir=$W
/usr/bin/time -f "TIME eval wall %e s user %U s sys %S s maxrss %M KB" nice -n 5 python -m eval --workdir=$W --tasks=perplexity --lengths=131072 --config.data.max_documents=0
