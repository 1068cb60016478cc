#!/bin/bash
# The public 128K commands of issue 14 item 4 for one attention pattern (G, L or D), with CPU time:
# STEPS steps + checkpoint (default 2), resume for 1 more step, perplexity at 131072, then the numbers
# to docs/results/train_128k/PATTERN.json (benchmarks/train_128k_summary.py).
# Usage: [PPL_DOCUMENTS=N] benchmarks/train_128k_cpu.sh PATTERN [STEPS] > log   (nice -n 15: a shared machine)
# PPL_DOCUMENTS: eval's --ppl_documents (default 16; the built-in corpus's held-out text holds 3 windows of 131072).
P=$1; STEPS=${2:-2}; W=runs/128k_$P
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
common="--config=configs/decoder_tiny.py:tiny --config.data.seq_len=131072 --config.model.max_len=131072 --config.data.batch_size=1 --config.model.remat=full --config.loss_chunk_tokens=8192 --config.model.attention_pattern=$P --config.mesh.data=1"
# One step needs no warmup (optim.warmup_steps must be < num_steps); both invocations then agree on it.
if [ "$STEPS" = 1 ]; then common="$common --config.optim.warmup_steps=0"; fi
fmt="wall %e s user %U s sys %S s maxrss %M KB"
mkdir -p $W
/usr/bin/time -f "$fmt" -o $W/time_train.txt nice -n 15 python train.py $common --config.num_steps=$STEPS --config.checkpoint.every=$STEPS --config.eval_every=$STEPS --workdir=$W || exit 1
/usr/bin/time -f "$fmt" -o $W/time_resume.txt nice -n 15 python train.py $common --config.num_steps=$((STEPS + 1)) --config.checkpoint.every=$STEPS --config.eval_every=$STEPS --workdir=$W || exit 1
/usr/bin/time -f "$fmt" -o $W/time_eval.txt nice -n 15 python -m eval --workdir=$W --tasks=perplexity --lengths=131072 ${PPL_DOCUMENTS:+--ppl_documents=$PPL_DOCUMENTS} || exit 1
python -m benchmarks.train_128k_summary --workdir=$W --json=docs/results/train_128k/$P.json
