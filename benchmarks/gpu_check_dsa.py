"""GPU check of the DSA Pallas kernels: sparse_attend "pallas_gpu" and topk_indices "pallas_gpu".

Called by benchmarks/gpu_check.py (run(...)), so one GPU session checks every kernel:
  1. compiled correctness: sparse attention (forward + gradients; MLA-style MQA, GQA, -1 slots, a query with
     no key) against attention/reference.py with a selection mask, by ||x - ref|| / ||ref||; top-k selection
     against the "reference" selector, exactly on small-integer inputs (exact float32 scores, many ties:
     causal, window + q_offset, segments with a [B] q_offset, top_k above the visible count), and by the
     selected keys' scores for bf16 / fp8 products;
  2. speed against the "xla" impls: sparse attention with V3.2's shapes (K=1, H=576, Hv=512, k=2048,
     16 heads) forward and forward+backward, FLOPs 2*B*T*N*k*(H+Hv) forward and 2*B*T*N*k*(3H+2Hv) more
     backward; top-k with the V3.2 indexer (Hi=64, Di=128), FLOPs 2*Hi*(Di+1) per visible causal pair.
Times are medians of `reps` runs after a compile + warm-up run (benchmarks.common.time_fn).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from attention import Mask
from attention.dsa import indexer_scores, selection_mask, sparse_attend, topk_indices
from attention.kernel_utils import default_scale
from attention.reference import attention_with_lse
from attention.testing import rel_err, tolerance
from benchmarks.common import time_fn


def _random_indices(rng, b, t, s, top_k):
  idx = np.stack([np.stack([rng.permutation(s)[:top_k] for _ in range(t)]) for _ in range(b)]).astype(np.int32)
  idx[rng.random(idx.shape) < 0.2] = -1
  idx[0, 1] = -1  # a query with no key
  return jnp.asarray(idx)


def check_sparse(b, t, s, n, kh, h, hv, top_k, dtype, *, interpret, seed=0):
  """Errors of the sparse kernel's out, dq, dk, dv against the float32 reference; (ok, errs)."""
  ks = jax.random.split(jax.random.key(seed), 4)
  dt = jnp.dtype(dtype)
  q, k, v = (jax.random.normal(kk, shape, jnp.float32).astype(dt) for kk, shape in
             zip(ks, [(b, t, n, h), (b, s, kh, h), (b, s, kh, hv)]))
  do = jax.random.normal(ks[3], (b, t, n, hv), jnp.float32).astype(dt)
  idx = _random_indices(np.random.default_rng(seed), b, t, s, top_k)
  vis = selection_mask(idx, s)
  ours = lambda q, k, v: sparse_attend(q, k, v, idx, impl="pallas_gpu", interpret=interpret)
  theirs = lambda q, k, v: attention_with_lse(q, k, v, vis, default_scale(h))[0]
  run = lambda f, *xs: jax.jit(lambda *xs: (lambda o, vjp: (o, *vjp(do.astype(o.dtype))))(*jax.vjp(f, *xs)))(*xs)
  got = run(ours, q, k, v)
  with jax.default_matmul_precision("highest"):
    want = run(theirs, *(x.astype(jnp.float32) for x in (q, k, v)))
  errs = {name: rel_err(g, w) for name, g, w in zip(("out", "dq", "dk", "dv"), got, want)}
  ok = all(e < tolerance(dt) for e in errs.values()) and bool(np.all(np.asarray(got[0][0, 1], np.float32) == 0))
  return ok, errs


def _np_topk(score, visible, top_k):
  """Best first by (-score, key index) over the visible keys, -1 padded (float64 NumPy)."""
  out = -np.ones(score.shape[:2] + (top_k,), np.int32)
  for bi, ti in np.ndindex(*score.shape[:2]):
    keys = np.nonzero(visible[bi, ti])[0]
    order = keys[np.argsort(-score[bi, ti, keys], kind="stable")][:top_k]
    out[bi, ti, :len(order)] = order
  return out


def check_topk(b, t, s, hi, di, top_k, mask, *, q_offset=0, segmented=False, score_dtype=jnp.float32,
               interpret, seed=0):
  """The Pallas selector against a float64 oracle: exact indices for float32 scores of small integers,
  equal selected scores (|diff| / max) for bf16 / fp8 products. Returns (ok, mismatch fraction)."""
  ks = jax.random.split(jax.random.key(seed), 3)
  exact = score_dtype == jnp.float32
  draw = ((lambda k, shape: jax.random.randint(k, shape, -2, 3).astype(jnp.float32)) if exact else
          (lambda k, shape: jax.random.normal(k, shape, jnp.float32)))
  q_idx, k_idx, w = draw(ks[0], (b, t, hi, di)), draw(ks[1], (b, s, di)), draw(ks[2], (b, t, hi))
  seg = kv_seg = None
  if segmented:
    kv_seg = jnp.asarray(np.minimum(np.arange(s) * 3 // s, 2)[None].repeat(b, 0), jnp.int32)
    seg = kv_seg[:, :t]
  off = jnp.asarray(q_offset, jnp.int32) if np.ndim(q_offset) else q_offset
  kw = dict(top_k=top_k, mask=mask, q_offset=off, segment_ids=seg, kv_segment_ids=kv_seg, score_dtype=score_dtype)
  got = np.asarray(jax.jit(lambda a, c, d: topk_indices(a, c, d, impl="pallas_gpu", interpret=interpret,
                                                        **kw))(q_idx, k_idx, w))
  score = np.asarray(indexer_scores(q_idx, k_idx, w, score_dtype=score_dtype), np.float64)
  pos = np.asarray(q_offset).reshape(-1, 1)[:, :, None] + np.arange(t)[None, :, None]  # [B|1, T, 1]
  kpos = np.arange(s)[None, None]
  vis = np.ones((b, t, s), bool) & (kpos <= pos if mask.causal else True)
  if mask.window is not None:
    vis &= (kpos >= pos - mask.window[0]) & (kpos <= pos + mask.window[1])
  if segmented:
    vis &= np.asarray(seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]
  want = _np_topk(score, vis, top_k)
  if exact:
    bad = float(np.mean(got != want))
  else:
    pick = lambda idx: np.take_along_axis(score, np.maximum(idx, 0), axis=2) * (idx >= 0)
    bad = float(np.mean((np.abs(pick(got) - pick(want)) > 1e-3 * np.abs(score).max()) | ((got < 0) != (want < 0))))
  return bad == 0.0, bad


def _cases(interpret):
  if interpret:  # CPU smoke run: the same code paths, tiny
    sparse = [(1, 4, 40, 4, 2, 16, 16, 9, "float32")]
    topk = [dict(b=2, t=20, s=37, hi=2, di=8, top_k=6, mask=Mask(causal=True, window=(9, 0)), q_offset=5)]
  else:
    sparse = [(1, 256, 1024, 16, 1, 576, 512, 256, "bfloat16"),  # MLA-style MQA
              (2, 128, 700, 8, 2, 64, 64, 100, "float32"),  # GQA, odd S and k
              (1, 64, 512, 128, 1, 576, 512, 2048, "bfloat16")]  # V3.2: 128 heads, k > S (-1 slots)
    topk = [dict(b=2, t=300, s=300, hi=8, di=64, top_k=64, mask=Mask(causal=True)),
            dict(b=1, t=200, s=1000, hi=8, di=64, top_k=128, mask=Mask(causal=True, window=(300, 0)), q_offset=700),
            dict(b=2, t=256, s=256, hi=4, di=32, top_k=300, mask=Mask(causal=True), q_offset=np.array([0, 3]),
                 segmented=True),
            dict(b=1, t=512, s=2048, hi=64, di=128, top_k=256, mask=Mask(causal=True), q_offset=1536,
                 score_dtype=jnp.bfloat16),
            dict(b=1, t=512, s=2048, hi=64, di=128, top_k=256, mask=Mask(causal=True), q_offset=1536,
                 score_dtype=jnp.float8_e4m3fn)]
  return sparse, topk


def run_checks(*, interpret: bool) -> bool:
  print(f"== DSA kernels, correctness ({'interpret' if interpret else 'compiled'})", flush=True)
  ok = True
  sparse, topk = _cases(interpret)
  for case in sparse:
    t0 = time.perf_counter()
    try:
      good, errs = check_sparse(*case, interpret=interpret)
      msg = "  ".join(f"{k}={v:.1e}" for k, v in errs.items())
    except Exception as e:  # report every case, then fail at the end
      good, msg = False, f"{type(e).__name__}: {str(e)[:300]}"
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'}  sparse_attend {case}: {msg} ({time.perf_counter() - t0:.1f}s)", flush=True)
  for case in topk:
    t0 = time.perf_counter()
    try:
      good, bad = check_topk(**case, interpret=interpret)
      msg = f"mismatched slots {bad:.2%}"
    except Exception as e:
      good, msg = False, f"{type(e).__name__}: {str(e)[:300]}"
    ok &= good
    name = {k: (jnp.dtype(v).name if k == "score_dtype" else v) for k, v in case.items()}
    print(f"{'ok  ' if good else 'FAIL'}  topk_indices {name}: {msg} ({time.perf_counter() - t0:.1f}s)", flush=True)
  return ok


def run_bench(lengths, reps: int):
  """TFLOP/s of the Pallas GPU DSA kernels next to the xla impls, bf16."""
  n, h, hv, top_k, hi, di = 16, 576, 512, 2048, 64, 128
  print(f"== DSA speed: bf16, sparse N={n} K=1 H={h} Hv={hv} k={top_k}; top-k Hi={hi} Di={di}; TFLOP/s (ms)",
        flush=True)
  for length in lengths:
    keys = jax.random.split(jax.random.key(length), 7)
    q = jax.random.normal(keys[0], (1, length, n, h), jnp.bfloat16)
    k = jax.random.normal(keys[1], (1, length, 1, h), jnp.bfloat16)
    v = jax.random.normal(keys[2], (1, length, 1, hv), jnp.bfloat16)
    do = jax.random.normal(keys[3], (1, length, n, hv), jnp.bfloat16)
    q_idx = jax.random.normal(keys[4], (1, length, hi, di), jnp.bfloat16)
    k_idx = jax.random.normal(keys[5], (1, length, di), jnp.bfloat16)
    w = jax.random.normal(keys[6], (1, length, hi), jnp.float32)
    idx = topk_indices(q_idx, k_idx, w, top_k=top_k, impl="xla")
    valid = float(jnp.sum(idx >= 0))  # selected (query, key) pairs
    fwd_fl = 2 * n * valid * (h + hv)
    bwd_fl = 2 * n * valid * (3 * h + 2 * hv)
    pairs = length * (length + 1) / 2
    topk_fl = 2 * hi * (di + 1) * pairs
    for impl in ("pallas_gpu", "xla"):
      res = []
      fwd = jax.jit(lambda q, k, v, impl=impl: sparse_attend(q, k, v, idx, impl=impl))
      fwd_bwd = jax.jit(lambda q, k, v, do, impl=impl: jax.vjp(lambda *x: sparse_attend(*x, idx, impl=impl),
                                                              q, k, v)[1](do))
      sel = jax.jit(lambda a, b, c, impl=impl: topk_indices(a, b, c, top_k=top_k, impl=impl))
      for name, f, args, fl in (("sparse fwd", fwd, (q, k, v), fwd_fl),
                                ("sparse fwd+bwd", fwd_bwd, (q, k, v, do), fwd_fl + bwd_fl),
                                ("topk", sel, (q_idx, k_idx, w), topk_fl)):
        try:
          sec = time_fn(f, args, reps)
          res.append(f"{name} {fl / sec / 1e12:6.1f} ({sec * 1e3:8.2f} ms)")
        except Exception as e:
          res.append(f"{name} error: {type(e).__name__}: {str(e).splitlines()[0][:60]}")
      print(f"  L={length} {impl:10s}: " + " | ".join(res), flush=True)


def run(*, interpret: bool, bench: bool, reps: int, lengths=(4096, 16384)) -> bool:
  """The DSA part of benchmarks/gpu_check.py: correctness, then (compiled, if bench) the speed lines."""
  ok = run_checks(interpret=interpret)
  print(f"DSA correctness: {'ALL OK' if ok else 'FAILURES'}", flush=True)
  if bench and not interpret:
    run_bench(lengths, reps)
  return ok
