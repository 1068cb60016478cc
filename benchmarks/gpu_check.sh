#!/usr/bin/env bash
# Run on a GPU machine (H100/H200, jax >= 0.10 with CUDA; no network, installs nothing):
#   bash benchmarks/gpu_check.sh            correctness of every compiled kernel config, then the speed table
#   bash benchmarks/gpu_check.sh --sweep    also time alternative tile/warp/stage settings (about 1 more minute)
# Takes under 6 minutes on an H100. Output is also written to $OUT/gpu_check.log when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOG="${OUT:-/tmp}/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 600 "$PY" -u benchmarks/gpu_check.py "$@" 2>&1 | tee "$LOG"
