#!/usr/bin/env bash
# Run on a GPU machine (H100/H200, jax >= 0.10 with CUDA; no network, installs nothing):
#   bash benchmarks/gpu_check.sh            correctness of every compiled kernel config, then the speed table
#   bash benchmarks/gpu_check.sh --sweep    also time alternative tile/warp/stage settings (about 1 more minute)
# Measured on an H200 (jax 0.11.2): 4-6 minutes with --sweep, most of it compiling the 10 correctness
# cases; less without --sweep. Output is also written to $OUT/gpu_check.log when OUT is set (else /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOG="${OUT:-/tmp}/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 600 "$PY" -u benchmarks/gpu_check.py "$@" 2>&1 | tee "$LOG"
