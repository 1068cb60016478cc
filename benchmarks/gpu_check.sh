#!/usr/bin/env bash
# Run on a GPU machine (H100/H200, jax >= 0.10 with CUDA; no network, installs nothing):
#   bash benchmarks/gpu_check.sh            correctness of every compiled kernel config, then the speed table
#   bash benchmarks/gpu_check.sh --sweep    also time alternative kernel configurations of both Pallas kernels
# The previous version (pallas_gpu only, per-call wall times) took 4-6 minutes with --sweep on an H200
# (jax 0.11.2); this one adds pallas_mgpu and tokamax and has not run on a GPU yet: if the 600 s limit
# cuts it, pass --lengths 16384,32768 or --impls pallas_mgpu. Output is also written to $OUT/gpu_check.log
# and $OUT/gpu_check.json when OUT is set (else /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOG="${OUT:-/tmp}/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 600 "$PY" -u benchmarks/gpu_check.py "$@" 2>&1 | tee "$LOG"
