"""Ring attention (attention/ring.py) on real accelerators: correctness against the dense reference, then time.

Ring Attention (Liu et al., arXiv 2310.01889) over every local device as the `context` axis (one GPU gives a
ring of one device that still runs the load-balanced chunk pairs, traced q_offsets and skipped steps).
  1. forward and gradients of ring_attention vs attention.reference for causal, bidirectional, windowed
     and packed inputs, per local kernel (xla, pallas), by max |x - ref| / max |ref|, float32;
  2. the median time of forward+backward at a longer length, bf16, per local kernel.

  python benchmarks/ring_gpu_check.py [--length 4096] [--long 32768]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from attention import Mask, attend
from attention.ring import ring_attention
from attention.testing import random_qkv, rel_err
from benchmarks.common import time_fn

MASKS = {"causal": Mask(causal=True), "bidirectional": Mask(), "window": Mask(causal=True, window=(300, 0))}


def _fwd_bwd(fn):
  @jax.jit
  def run(q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(ct)
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for flag, default in (("--length", 4096), ("--long", 32768), ("--reps", 5)):  # correctness, timed, repeats
    parser.add_argument(flag, type=int, default=default)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("context",), axis_types=(jax.sharding.AxisType.Auto,))
  print(f"{n} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  failures = 0
  for impl in ("xla", "pallas"):
    for name, mask in MASKS.items():
      for packed in (False, True):
        q, k, v, ct = random_qkv(0, 2, args.length, args.length, 4, 2, 64)
        seg = None
        if packed:
          seg = jnp.asarray(np.repeat(np.arange(5), -(-args.length // 5))[None, :args.length].repeat(2, 0))
        ring = _fwd_bwd(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=mask, segment_ids=seg, impl=impl))
        ref = _fwd_bwd(lambda q, k, v: attend(q, k, v, mask=mask, segment_ids=seg, impl="reference"))
        (out, grads), (rout, rgrads) = ring(q, k, v, ct), ref(q, k, v, ct)
        errs = [rel_err(out, rout)] + [rel_err(g, r) for g, r in zip(grads, rgrads)]
        ok = max(errs) < 1e-4
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {impl:6s} {name:13s} packed={packed!s:5s} "
              f"out/dq/dk/dv rel err {' '.join(f'{e:.1e}' for e in errs)}")
  for impl in ("xla", "pallas"):
    q, k, v, ct = random_qkv(1, 1, args.long, args.long, 16, 16, 128, dtype=jnp.bfloat16)
    ring = _fwd_bwd(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=Mask(causal=True), impl=impl))
    sec = time_fn(ring, (q, k, v, ct), reps=args.reps)
    print(f"time {impl:6s} causal L={args.long} N=16 H=128 bf16 fwd+bwd: {sec * 1e3:.1f} ms")
  print("FAILURES" if failures else "ALL OK", failures)


if __name__ == "__main__":
  main()
