"""GPU check of the Pallas GPU FlashAttention kernels (attention/pallas_gpu.py): correctness, then speed.

FlashAttention-2 (Dao, arXiv 2307.08691) kernels, compiled through Triton (not interpreted):
  1. every kernel configuration (forward + gradients; masks, GQA/MQA, head dims 64/128/256 and padded ones,
     bf16/fp16/fp32, segment ids, q_offset, odd lengths, dlse) against attention/reference.py in float32
     with highest-precision matmuls, by ||out - ref|| / ||ref||;
  2. TFLOP/s forward and forward+backward at L = 4K, 16K, 32K (head dim 128, bf16, N = 16 heads and
     B = max(1, 16K / L), so every length fills the GPU), causal and window=(1024, 0), side by side with cuDNN
     (jax.nn.dot_product_attention(implementation="cudnn")) and JAX's Pallas Triton mha, if importable.
FLOPs are counted from the block map (attention.mask.attention_flops, 128x128 tiles, the same count for
every implementation), times are the median of --reps runs after a compile + warm-up run, each run ended by
block_until_ready. Run it with benchmarks/gpu_check.sh on a GPU; on a CPU, --interpret runs part 1 tiny.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from attention import Mask, attention_flops, pallas_gpu, reference
from benchmarks import gpu_check_dsa

TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
  """One correctness configuration: shapes, mask, dtype and optional extras."""

  name: str
  b: int
  t: int
  s: int
  n: int
  k: int
  h: int
  hv: int
  dtype: str
  mask: Mask
  segments: bool = False
  q_offset: object = 0  # int, or "array" for an int32 [B] offset, or a negative int (ring attention)
  dlse: bool = False


CASES = (
    Case("causal bf16 H128", 2, 512, 512, 4, 4, 128, 128, "bfloat16", Mask(causal=True)),
    Case("full bf16 H64 GQA T!=S odd", 1, 1000, 1537, 4, 2, 64, 64, "bfloat16", Mask()),
    Case("window bf16 H256 MQA", 1, 384, 384, 4, 1, 256, 256, "bfloat16", Mask(causal=True, window=(64, 0))),
    Case("window(32,32) fp16 H128 segments", 2, 300, 300, 4, 2, 128, 128, "float16", Mask(window=(32, 32)),
         segments=True),
    Case("causal fp32 H64 q_offset[B]", 2, 100, 333, 4, 2, 64, 64, "float32", Mask(causal=True), q_offset="array"),
    Case("causal bf16 H96 Hv64 padded", 1, 257, 257, 2, 1, 96, 64, "bfloat16", Mask(causal=True)),
    Case("causal fp32 H256", 1, 200, 200, 2, 2, 256, 256, "float32", Mask(causal=True)),
    Case("causal bf16 H128 dlse", 1, 256, 256, 2, 1, 128, 128, "bfloat16", Mask(causal=True), dlse=True),
    Case("causal bf16 H64 q_offset=-128 (ring)", 1, 256, 384, 4, 2, 64, 64, "bfloat16", Mask(causal=True),
         q_offset=-128),
    Case("causal fp32 H32 segments GQA", 1, 160, 160, 6, 2, 32, 32, "float32", Mask(causal=True), segments=True),
)
TINY_CASES = (  # --interpret on a CPU: the same code paths, small enough to run in seconds
    Case("tiny causal GQA segments", 1, 40, 56, 4, 2, 32, 32, "float32", Mask(causal=True), segments=True),
    Case("tiny window bf16 dlse", 1, 33, 33, 2, 1, 64, 64, "bfloat16", Mask(window=(8, 4)), dlse=True),
)


def _inputs(case: Case, seed: int):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  dt = jnp.dtype(case.dtype)
  q = jax.random.normal(keys[0], (case.b, case.t, case.n, case.h), jnp.float32).astype(dt)
  k = jax.random.normal(keys[1], (case.b, case.s, case.k, case.h), jnp.float32).astype(dt)
  v = jax.random.normal(keys[2], (case.b, case.s, case.k, case.hv), jnp.float32).astype(dt)
  do = jax.random.normal(keys[3], (case.b, case.t, case.n, case.hv), jnp.float32).astype(dt)
  dlse = jax.random.normal(keys[4], (case.b, case.n, case.t), jnp.float32)
  kw = dict(mask=case.mask)
  if case.segments:  # 3 documents per row; query segment 3 never appears among the keys (empty rows)
    kw["segment_ids"] = (jnp.arange(case.t)[None] * 4 // case.t).astype(jnp.int32).repeat(case.b, 0)
    kw["kv_segment_ids"] = jnp.minimum(jnp.arange(case.s)[None] * 4 // case.s, 2).astype(jnp.int32).repeat(case.b, 0)
  if case.q_offset == "array":
    kw["q_offset"] = jax.random.randint(keys[5], (case.b,), 0, case.s, jnp.int32)
  else:
    kw["q_offset"] = case.q_offset
  return q, k, v, do, dlse, kw


def _outputs_and_grads(attn_with_lse, q, k, v, do, dlse, use_dlse):
  """(out, lse), (dq, dk, dv) of sum(out * do) [+ sum(lse * dlse)] in one compiled program."""
  def loss(q, k, v):
    out, lse = attn_with_lse(q, k, v)
    total = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32))
    if use_dlse:
      total += jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse) * dlse)
    return total, (out, lse)
  grads, outs = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
  return outs, grads


def _reference_with_lse(q, k, v, *, mask, segment_ids=None, kv_segment_ids=None, q_offset=0):
  up = lambda x: x.astype(jnp.float32)
  visible = reference.dense_mask(mask, q.shape[1], k.shape[1], segment_ids=segment_ids,
                                 kv_segment_ids=kv_segment_ids, q_offset=q_offset)
  return reference.attention_with_lse(up(q), up(k), up(v), visible, q.shape[-1] ** -0.5)


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_case(case: Case, *, interpret: bool, seed: int = 0) -> dict:
  """Errors of the compiled (or interpreted) kernels against the float32 reference for one case."""
  q, k, v, do, dlse, kw = _inputs(case, seed)
  ours = lambda q, k, v: pallas_gpu.flash_attention_with_lse(q, k, v, interpret=interpret, **kw)
  theirs = lambda q, k, v: _reference_with_lse(q, k, v, **kw)
  (out, lse), grads = _outputs_and_grads(ours, q, k, v, do, dlse, case.dlse)
  with jax.default_matmul_precision("highest"):
    (ref_out, ref_lse), ref_grads = _outputs_and_grads(theirs, q, k, v, do, dlse, case.dlse)
  ref_lse = np.asarray(ref_lse)
  lse = np.asarray(lse)
  finite = np.isfinite(ref_lse)
  errs = {"out": rel(out, ref_out), "lse": rel(lse[finite], ref_lse[finite])}
  errs.update({f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
  ok = all(e < TOL[case.dtype] for e in errs.values())
  ok &= bool(np.array_equal(np.isinf(lse), ~finite))  # +inf exactly for rows that see no key
  ok &= all(bool(np.all(np.isfinite(np.asarray(x, np.float32)))) for x in (out, *grads))
  empty = ~finite.transpose(0, 2, 1)  # [B, T, N]
  ok &= bool(np.all(np.asarray(out, np.float32)[empty] == 0))  # empty rows return zeros
  return {"case": case.name, "ok": ok, **errs}


def run_checks(cases, *, interpret: bool) -> bool:
  print(f"== correctness ({'interpret' if interpret else 'compiled'}) vs float32 reference, "
        "||x - ref|| / ||ref||", flush=True)
  all_ok = True
  for case in cases:
    t0 = time.perf_counter()
    try:
      r = check_case(case, interpret=interpret)
    except Exception as e:  # report every case, then fail at the end
      print(f"FAIL  {case.name}: {type(e).__name__}: {str(e)[:400]}", flush=True)
      all_ok = False
      continue
    all_ok &= r["ok"]
    errs = "  ".join(f"{n}={r[n]:.1e}" for n in ("out", "lse", "dq", "dk", "dv"))
    print(f"{'ok  ' if r['ok'] else 'FAIL'}  {case.name:40s} {errs}  ({time.perf_counter() - t0:.1f}s)", flush=True)
  return all_ok


def bench_shapes(length: int, tokens: int = 16384, heads: int = 16):
  """(B, N) for a length: at least 16K tokens x 16 heads, so 4K and 32K runs both fill the GPU."""
  return max(1, tokens // length), heads


def flop_table(lengths, masks, head_dim=128):
  """{(length, mask name): (fwd FLOPs, fwd+bwd FLOPs)} counted from the block map."""
  table = {}
  for length in lengths:
    b, n = bench_shapes(length)
    for name, mask in masks.items():
      kw = dict(batch=b)
      table[(length, name)] = (attention_flops(mask, length, length, n, head_dim, **kw),
                               attention_flops(mask, length, length, n, head_dim, backward=True, **kw))
  return table


def time_fn(fn, args, reps: int) -> float:
  """Median seconds of reps calls after one compile + warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _impls(mask: Mask):
  """name -> attention fn(q, k, v) -> out, or a string saying why the impl cannot run this mask."""
  scale = 128 ** -0.5
  impls = {"pallas_gpu": lambda q, k, v: pallas_gpu.flash_attention(q, k, v, mask=mask)}
  impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=mask.causal, local_window_size=mask.window, implementation="cudnn")
  try:
    from jax.experimental.pallas.ops.gpu import attention as jax_mha
  except Exception as e:  # deprecated upstream; may be gone in a later jax
    impls["jax_pallas_mha"] = f"not importable ({type(e).__name__})"
  else:
    if mask.window is None:
      impls["jax_pallas_mha"] = lambda q, k, v: jax_mha.mha(q, k, v, None, sm_scale=scale, causal=mask.causal)
    else:
      impls["jax_pallas_mha"] = "no window support"
  return impls


def run_bench(lengths, masks, reps: int):
  flops = flop_table(lengths, masks)
  rows = []
  print("== speed: bf16, head dim 128, TFLOP/s from block-map FLOPs (median of "
        f"{reps}), device {jax.devices()[0].device_kind}", flush=True)
  for length in lengths:
    b, n = bench_shapes(length)
    keys = jax.random.split(jax.random.PRNGKey(length), 4)
    q, k, v, do = (jax.random.normal(kk, (b, length, n, 128), jnp.float32).astype(jnp.bfloat16) for kk in keys)
    for mname, mask in masks.items():
      for iname, fn in _impls(mask).items():
        if isinstance(fn, str):
          rows.append((length, b, n, mname, iname, fn, fn))
          continue
        res = []
        fwd = jax.jit(fn)
        fwd_bwd = jax.jit(lambda q, k, v, do, fn=fn: jax.vjp(fn, q, k, v)[1](do))
        for f, args, fl in ((fwd, (q, k, v), flops[(length, mname)][0]),
                            (fwd_bwd, (q, k, v, do), flops[(length, mname)][1])):
          try:
            sec = time_fn(f, args, reps)
            res.append(f"{fl / sec / 1e12:7.1f} ({sec * 1e3:7.2f} ms)")
          except Exception as e:
            res.append(f"error: {type(e).__name__}: {str(e).splitlines()[0][:60]}")
        rows.append((length, b, n, mname, iname, *res))
        print(f"  L={length} {mname} {iname}: fwd {res[0]} | fwd+bwd {res[1]}", flush=True)
  print("\n| L | B x N | mask | impl | fwd TFLOP/s (ms) | fwd+bwd TFLOP/s (ms) |\n|---|---|---|---|---|---|")
  for length, b, n, mname, iname, f, fb in rows:
    print(f"| {length} | {b} x {n} | {mname} | {iname} | {f} | {fb} |")
  ms = {(r[0], r[3]): r[5] for r in rows if r[4] == "pallas_gpu" and "ms)" in r[5]}
  for length in lengths:  # the sliding window must skip tiles, not mask them
    c, w = ms.get((length, "causal")), ms.get((length, "window(1024,0)"))
    if c and w:
      speedup = float(c.split("(")[1].split()[0]) / float(w.split("(")[1].split()[0])
      print(f"pallas_gpu fwd at L={length}: window(1024,0) is {speedup:.1f}x faster than causal")
  return rows


def run_sweep(length: int, reps: int):
  """Time alternative (block, warps, stages) entries of the bf16 head-dim-128 row of the default table."""
  b, n = bench_shapes(length)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  q, k, v, do = (jax.random.normal(kk, (b, length, n, 128), jnp.float32).astype(jnp.bfloat16) for kk in keys)
  mask = Mask(causal=True)
  fl = attention_flops(mask, length, length, n, 128, batch=b)
  fl_bwd = attention_flops(mask, length, length, n, 128, batch=b, backward=True) - fl
  table = pallas_gpu._DEFAULTS  # the script tunes the table it reports on
  base = table[(128, True)]
  KC = pallas_gpu.KernelConfig
  print(f"== sweep: causal L={length}, B={b}, N={n}, bf16 H128 (TFLOP/s)", flush=True)
  try:
    for fwd in (KC(128, 64, 8, 3), KC(128, 128, 8, 3), KC(128, 64, 4, 3), KC(64, 64, 4, 3)):
      table[(128, True)] = dataclasses.replace(base, fwd=fwd)
      try:
        sec = time_fn(jax.jit(lambda q, k, v: pallas_gpu.flash_forward(q, k, v, mask=mask)[0]), (q, k, v), reps)
        print(f"  fwd {fwd}: {fl / sec / 1e12:.1f}", flush=True)
      except Exception as e:
        print(f"  fwd {fwd}: error {type(e).__name__}: {str(e).splitlines()[0][:80]}", flush=True)
    out, lse = jax.jit(lambda q, k, v: pallas_gpu.flash_forward(q, k, v, mask=mask))(q, k, v)
    bwd_fn = jax.jit(lambda q, k, v, o, l, d: pallas_gpu.flash_backward(q, k, v, o, l, d, mask=mask))
    for dkv, dq in ((KC(64, 128, 8, 2), KC(128, 64, 8, 2)), (KC(32, 128, 4, 2), KC(128, 32, 4, 2)),
                    (KC(64, 64, 4, 2), KC(64, 64, 4, 2)), (KC(64, 128, 8, 3), KC(128, 64, 8, 3)),
                    (KC(32, 64, 4, 3), KC(64, 32, 4, 3)), (KC(128, 128, 8, 2), KC(128, 128, 8, 2)),
                    (KC(128, 64, 8, 2), KC(64, 128, 8, 2))):
      table[(128, True)] = dataclasses.replace(base, dkv=dkv, dq=dq)
      try:
        sec = time_fn(bwd_fn, (q, k, v, out, lse, do), reps)
        print(f"  bwd dkv {dkv} dq {dq}: {fl_bwd / sec / 1e12:.1f}", flush=True)
      except Exception as e:
        print(f"  bwd {dkv}/{dq}: error {type(e).__name__}: {str(e).splitlines()[0][:80]}", flush=True)
  finally:
    table[(128, True)] = base


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--interpret", action="store_true", help="interpret mode with tiny cases (CPU smoke run)")
  p.add_argument("--skip-check", action="store_true", help="skip the correctness part")
  p.add_argument("--skip-bench", action="store_true", help="skip the speed table")
  p.add_argument("--sweep", action="store_true", help="also time alternative tile/warp/stage settings")
  p.add_argument("--lengths", default="4096,16384,32768", help="comma-separated sequence lengths")
  p.add_argument("--reps", type=int, default=10, help="timed runs per entry (median reported)")
  args = p.parse_args(argv)
  try:
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
  except ValueError:
    p.error(f"--lengths must be comma-separated ints, got {args.lengths!r}")
  if not args.lengths or min(args.lengths) < 1 or args.reps < 1:
    p.error(f"--lengths and --reps must be positive, got {args.lengths} and {args.reps}")
  return args


BENCH_MASKS = {"causal": Mask(causal=True), "window(1024,0)": Mask(window=(1024, 0))}


def main(argv=None) -> int:
  args = parse_args(argv)
  print(f"jax {jax.__version__}, python {sys.version.split()[0]}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}", flush=True)
  ok = True
  if not args.skip_check:
    ok = run_checks(TINY_CASES if args.interpret else CASES, interpret=args.interpret)
    print(f"correctness: {'ALL OK' if ok else 'FAILURES'}", flush=True)
  if not args.skip_bench and not args.interpret:
    run_bench(args.lengths, BENCH_MASKS, args.reps)
  if args.sweep and not args.interpret:
    run_sweep(16384, args.reps)
  ok &= gpu_check_dsa.run(interpret=args.interpret, bench=not args.skip_bench, reps=args.reps)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
