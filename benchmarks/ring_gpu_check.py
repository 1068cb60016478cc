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
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from attention import Mask, attend
from attention.ring import ring_attention

MASKS = {"causal": Mask(causal=True), "bidirectional": Mask(), "window": Mask(causal=True, window=(300, 0))}


def _inputs(seed, b, length, n, k, h, dtype):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape = lambda heads: (b, length, heads, h)
  return (jax.random.normal(ks[0], shape(n), dtype), jax.random.normal(ks[1], shape(k), dtype),
          jax.random.normal(ks[2], shape(k), dtype), jax.random.normal(ks[3], shape(n), dtype))


def _fwd_bwd(fn):
  @jax.jit
  def run(q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(ct)
  return run


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1.0))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=4096)
  parser.add_argument("--long", type=int, default=32768)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("context",), axis_types=(jax.sharding.AxisType.Auto,))
  print(f"{n} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  failures = 0
  for impl in ("xla", "pallas"):
    for name, mask in MASKS.items():
      for packed in (False, True):
        q, k, v, ct = _inputs(0, 2, args.length, 4, 2, 64, jnp.float32)
        seg = None
        if packed:
          seg = jnp.asarray(np.repeat(np.arange(5), -(-args.length // 5))[None, :args.length].repeat(2, 0))
        ring = _fwd_bwd(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=mask, segment_ids=seg, impl=impl))
        ref = _fwd_bwd(lambda q, k, v: attend(q, k, v, mask=mask, segment_ids=seg, impl="reference"))
        (out, grads), (rout, rgrads) = ring(q, k, v, ct), ref(q, k, v, ct)
        errs = [_rel(out, rout)] + [_rel(g, r) for g, r in zip(grads, rgrads)]
        ok = max(errs) < 1e-4
        failures += not ok
        print(f"{'ok ' if ok else 'BAD'} {impl:6s} {name:13s} packed={packed!s:5s} "
              f"out/dq/dk/dv rel err {' '.join(f'{e:.1e}' for e in errs)}")
  for impl in ("xla", "pallas"):
    q, k, v, ct = _inputs(1, 1, args.long, 16, 16, 128, jnp.bfloat16)
    ring = _fwd_bwd(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=Mask(causal=True), impl=impl))
    jax.block_until_ready(ring(q, k, v, ct))
    times = []
    for _ in range(args.reps):
      t = time.perf_counter()
      jax.block_until_ready(ring(q, k, v, ct))
      times.append(time.perf_counter() - t)
    print(f"time {impl:6s} causal L={args.long} N=16 H=128 bf16 fwd+bwd: {statistics.median(times) * 1e3:.1f} ms")
  print("FAILURES" if failures else "ALL OK", failures)


if __name__ == "__main__":
  main()
