"""GPU check of the Pallas GPU FlashAttention kernels (pallas_gpu: Triton; pallas_mgpu: Mosaic GPU, Hopper).

Compiled, not interpreted:
  1. every kernel configuration (forward + gradients; masks, GQA/MQA, head dims 64/128/256 and padded ones,
     bf16/fp16/fp32, segment ids, q_offset, odd lengths, dlse) of each kernel against attention/reference.py
     in float32 with highest-precision matmuls, by ||out - ref|| / ||ref|| (pallas_mgpu: 2-byte dtypes only);
  2. TFLOP/s forward and forward+backward at L = 4K, 16K, 32K (head dim 128, bf16, N = 16 heads and
     B = max(1, 16K / L), so every length fills the GPU), causal and window=(1024, 0), for pallas_gpu,
     pallas_mgpu, cuDNN (jax.nn.dot_product_attention(implementation="cudnn")) and tokamax's Mosaic GPU
     kernel where the tokamax wheel is importable. Each timed configuration first passes a correctness
     check at L = 2K with the same mask and kernel configuration.
Every time is reported two ways: `loop`, the wall time of --calls calls inside one jitted fori_loop
divided by --calls (dispatch amortised; an optimization_barrier keeps XLA from hoisting the call out of the
loop), median of --reps loops; and `device`, the summed duration of the GPU kernels that one such loop ran,
read from a jax.profiler trace, divided by --calls. FLOPs are counted from the block map
(attention.mask.attention_flops, 128x128 tiles, the same count for every implementation).
--sweep times alternative kernel configurations of both Pallas kernels, each passed explicitly to its own
jit. Run it with benchmarks/gpu_check.sh on a GPU; on a CPU, --interpret runs part 1 tiny.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attention import Mask, attention_flops, pallas_gpu, pallas_mgpu, reference
from attention.testing import random_qkv, reference_with_lse, rel_err, tolerance
from benchmarks import gpu_check_dsa
from benchmarks.common import time_fn

KERNELS = {"pallas_gpu": pallas_gpu, "pallas_mgpu": pallas_mgpu}


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
    Case("causal fp16 H64 q_offset[B]", 2, 100, 333, 4, 2, 64, 64, "float16", Mask(causal=True), q_offset="array"),
    Case("causal bf16 H96 Hv64 padded", 1, 257, 257, 2, 1, 96, 64, "bfloat16", Mask(causal=True)),
    Case("causal fp32 H256", 1, 200, 200, 2, 2, 256, 256, "float32", Mask(causal=True)),
    Case("causal bf16 H128 dlse", 1, 256, 256, 2, 1, 128, 128, "bfloat16", Mask(causal=True), dlse=True),
    Case("causal bf16 H64 q_offset=-128 (ring)", 1, 256, 384, 4, 2, 64, 64, "bfloat16", Mask(causal=True),
         q_offset=-128),
    Case("causal fp32 H32 segments GQA", 1, 160, 160, 6, 2, 32, 32, "float32", Mask(causal=True), segments=True),
    Case("causal bf16 H32 segments GQA", 1, 160, 160, 6, 2, 32, 32, "bfloat16", Mask(causal=True), segments=True),
)
TINY_CASES = (  # --interpret on a CPU: the same code paths, small enough to run in seconds
    Case("tiny causal GQA segments", 1, 40, 56, 4, 2, 32, 32, "float32", Mask(causal=True), segments=True),
    Case("tiny window bf16 dlse", 1, 33, 33, 2, 1, 64, 64, "bfloat16", Mask(window=(8, 4)), dlse=True),
)


def _inputs(case: Case, seed: int):
  q, k, v, do = random_qkv(seed, case.b, case.t, case.s, case.n, case.k, case.h, case.hv, jnp.dtype(case.dtype))
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), 2)
  dlse = jax.random.normal(keys[0], (case.b, case.n, case.t), jnp.float32)
  kw = dict(mask=case.mask)
  if case.segments:  # 3 documents per row; query segment 3 never appears among the keys (empty rows)
    kw["segment_ids"] = (jnp.arange(case.t)[None] * 4 // case.t).astype(jnp.int32).repeat(case.b, 0)
    kw["kv_segment_ids"] = jnp.minimum(jnp.arange(case.s)[None] * 4 // case.s, 2).astype(jnp.int32).repeat(case.b, 0)
  if case.q_offset == "array":
    kw["q_offset"] = jax.random.randint(keys[1], (case.b,), 0, case.s, jnp.int32)
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


def supports(impl: str, dtype: str) -> bool:
  """pallas_mgpu multiplies on wgmma in bf16/fp16 only; pallas_gpu takes float32 too."""
  return impl != "pallas_mgpu" or dtype in ("bfloat16", "float16")


def check_case(case: Case, *, interpret: bool, impl: str = "pallas_gpu", configs=None, seed: int = 0) -> dict:
  """Errors of the compiled (or interpreted) kernel `impl` against the float32 reference for one case.

  configs: an explicit kernel configuration (a Configs of the kernel's KernelConfig), else the defaults.
  """
  q, k, v, do, dlse, kw = _inputs(case, seed)
  options = {} if configs is None else {"configs": configs}
  ours = lambda q, k, v: KERNELS[impl].flash_attention_with_lse(q, k, v, interpret=interpret, **options, **kw)
  theirs = lambda q, k, v: reference_with_lse(*(x.astype(jnp.float32) for x in (q, k, v)), **kw)
  (out, lse), grads = _outputs_and_grads(ours, q, k, v, do, dlse, case.dlse)
  with jax.default_matmul_precision("highest"):
    (ref_out, ref_lse), ref_grads = _outputs_and_grads(theirs, q, k, v, do, dlse, case.dlse)
  ref_lse = np.asarray(ref_lse)
  lse = np.asarray(lse)
  finite = np.isfinite(ref_lse)
  errs = {"out": rel_err(out, ref_out), "lse": rel_err(lse[finite], ref_lse[finite])}
  errs.update({f"d{n}": rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
  ok = all(e < tolerance(case.dtype) for e in errs.values())
  ok &= bool(np.array_equal(np.isinf(lse), ~finite))  # +inf exactly for rows that see no key
  ok &= all(bool(np.all(np.isfinite(np.asarray(x, np.float32)))) for x in (out, *grads))
  empty = ~finite.transpose(0, 2, 1)  # [B, T, N]
  ok &= bool(np.all(np.asarray(out, np.float32)[empty] == 0))  # empty rows return zeros
  return {"case": case.name, "impl": impl, "ok": ok, **errs}


def run_checks(cases, impls, *, interpret: bool) -> bool:
  print(f"== correctness ({'interpret' if interpret else 'compiled'}) vs float32 reference, "
        "||x - ref|| / ||ref||", flush=True)
  all_ok = True
  for impl in impls:
    for case in cases:
      if not supports(impl, case.dtype):
        continue
      t0 = time.perf_counter()
      try:
        r = check_case(case, interpret=interpret, impl=impl)
      except Exception as e:  # report every case, then fail at the end
        print(f"FAIL  {impl:11s} {case.name}: {type(e).__name__}: {str(e)[:400]}", flush=True)
        all_ok = False
        continue
      all_ok &= r["ok"]
      errs = "  ".join(f"{n}={r[n]:.1e}" for n in ("out", "lse", "dq", "dk", "dv"))
      print(f"{'ok  ' if r['ok'] else 'FAIL'}  {impl:11s} {case.name:40s} {errs}  "
            f"({time.perf_counter() - t0:.1f}s)", flush=True)
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


def looped(fn, calls: int):
  """jit of `calls` calls of fn(*args) in one fori_loop; returns a float32 scalar that uses every output.

  The arguments pass through an optimization_barrier each iteration, so XLA cannot hoist the loop-invariant
  call out of the loop, and each output feeds the carry, so no call is dead code.
  """

  def run(*args):
    def body(_, acc):
      outs = jax.tree.leaves(fn(*lax.optimization_barrier(args)))
      return acc + sum(jnp.sum(o[(0,) * o.ndim].astype(jnp.float32)) for o in outs)
    return lax.fori_loop(0, calls, body, jnp.float32(0))

  return jax.jit(run)


def kernel_seconds(profile, calls: int, device_prefix: str = "/device:GPU") -> tuple[float, int]:
  """(summed kernel seconds, kernel count) per call from a jax.profiler.ProfileData of `calls` calls.

  Counts the events of the device planes' stream lines (one event per kernel or copy the GPU ran), not
  the "XLA Ops"/"XLA Modules" lines, which restate the same time.
  """
  total_ns, count = 0.0, 0
  for plane in profile.planes:
    if not plane.name.startswith(device_prefix):
      continue
    for line in plane.lines:
      if not line.name.startswith("Stream"):
        continue
      for event in line.events:
        total_ns += event.duration_ns
        count += 1
  if count == 0:
    raise RuntimeError(f"the profile holds no kernel events on a {device_prefix} plane")
  return total_ns * 1e-9 / calls, count // calls


def device_seconds(run, args, calls: int) -> tuple[float, int]:
  """Per-call device kernel time of one (already compiled) looped program, from a profiler trace."""
  jax.block_until_ready(run(*args))
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      jax.block_until_ready(run(*args))
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
      raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {logdir}")
    return kernel_seconds(jax.profiler.ProfileData.from_file(paths[0]), calls)


def _tokamax():
  """tokamax's Mosaic GPU attention, or a string saying why it cannot run here."""
  try:
    import tokamax  # pylint: disable=g-import-not-at-top
  except Exception as e:  # its wheel is not part of this project's dependencies
    return f"tokamax not importable ({type(e).__name__}: {str(e)[:60]})"
  return tokamax


def impls_for(mask: Mask, configs: dict | None = None):
  """name -> attention fn(q, k, v) -> out, or a string saying why that impl cannot run here.

  configs: optional explicit kernel configurations, by impl name, passed to the kernel (never a global).
  """
  configs = configs or {}
  impls = {name: functools.partial(kernel.flash_attention, mask=mask,
                                   **({"configs": configs[name]} if name in configs else {}))
           for name, kernel in KERNELS.items()}
  impls.update({
      "cudnn": lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=mask.causal, local_window_size=mask.window, implementation="cudnn"),
  })
  tk = _tokamax()
  if isinstance(tk, str):
    impls["tokamax_mosaic"] = tk
  else:
    impls["tokamax_mosaic"] = lambda q, k, v: tk.dot_product_attention(
        q, k, v, is_causal=mask.causal, local_window_size=mask.window, implementation="mosaic")
  return impls


VERIFY_LENGTH = 2048


def verify(fn, mask: Mask, seed: int = 0) -> dict:
  """fn's forward and gradients against the float32 reference at L=2K (B=1, N=4, H=128, bf16)."""
  q, k, v, do = random_qkv(seed, 1, VERIFY_LENGTH, VERIFY_LENGTH, 4, 4, 128, dtype=jnp.bfloat16)
  run = lambda f: jax.jit(lambda q, k, v: jax.vjp(f, q, k, v))(q, k, v)
  out, vjp = run(fn)
  grads = vjp(do)
  with jax.default_matmul_precision("highest"):
    ref = lambda q, k, v: reference.attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=mask)
    ref_out, ref_vjp = run(ref)
    ref_grads = ref_vjp(do.astype(jnp.float32))
  errs = {"out": rel_err(out, ref_out), **{f"d{n}": rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
  return {"ok": all(e < tolerance(jnp.bfloat16) for e in errs.values()), **errs}


def time_entry(fn, args_fwd, args_bwd, calls: int, reps: int) -> dict:
  """Seconds per call, forward and forward+backward, by loop wall time and by device kernel time."""
  fwd = looped(fn, calls)
  fwd_bwd = looped(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do), calls)
  res = {}
  for name, run, args in (("fwd", fwd, args_fwd), ("fwd_bwd", fwd_bwd, args_bwd)):
    res[f"{name}_loop_s"] = time_fn(run, args, reps) / calls  # one looped program runs `calls` calls
    res[f"{name}_device_s"], res[f"{name}_kernels"] = device_seconds(run, args, calls)
  return res


def _fmt(flops, sec):
  return f"{flops / sec / 1e12:6.1f} ({sec * 1e3:7.3f} ms)"


def run_bench(lengths, masks, reps: int, calls: int) -> list[dict]:
  flops = flop_table(lengths, masks)
  rows = []
  print(f"== speed: bf16, head dim 128, TFLOP/s from block-map FLOPs; loop = wall time of {calls} calls in one "
        f"jitted loop (median of {reps}), device = profiler kernel time; {jax.devices()[0].device_kind}", flush=True)
  for length in lengths:
    b, n = bench_shapes(length)
    keys = jax.random.split(jax.random.PRNGKey(length), 4)
    q, k, v, do = (jax.random.normal(kk, (b, length, n, 128), jnp.float32).astype(jnp.bfloat16) for kk in keys)
    for mname, mask in masks.items():
      for iname, fn in impls_for(mask).items():
        row = {"length": length, "batch": b, "heads": n, "mask": mname, "impl": iname}
        rows.append(row)
        if isinstance(fn, str):
          row["skipped"] = fn
          print(f"  L={length} {mname} {iname}: skipped, {fn}", flush=True)
          continue
        try:
          row["check"] = verify(fn, mask)
          if not row["check"]["ok"]:  # a wrong kernel is not timed
            print(f"  L={length} {mname} {iname}: FAILS the L={VERIFY_LENGTH} check {row['check']}", flush=True)
            continue
          row.update(time_entry(fn, (q, k, v), (q, k, v, do), calls, reps))
        except Exception as e:
          row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
          print(f"  L={length} {mname} {iname}: error {row['error']}", flush=True)
          continue
        fl, fl_fb = flops[(length, mname)]
        row["fwd_flops"], row["fwd_bwd_flops"] = fl, fl_fb
        print(f"  L={length} {mname} {iname}: fwd loop {_fmt(fl, row['fwd_loop_s'])} device "
              f"{_fmt(fl, row['fwd_device_s'])} | fwd+bwd loop {_fmt(fl_fb, row['fwd_bwd_loop_s'])} device "
              f"{_fmt(fl_fb, row['fwd_bwd_device_s'])}", flush=True)
  print_table(rows)
  for line in summary(rows):
    print(line)
  return rows


def print_table(rows):
  print("\n| L | B x N | mask | impl | fwd loop TFLOP/s (ms) | fwd device | fwd+bwd loop | fwd+bwd device |\n"
        "|---|---|---|---|---|---|---|---|")
  for r in rows:
    cells = [f"{r['length']}", f"{r['batch']} x {r['heads']}", r["mask"], r["impl"]]
    if "fwd_loop_s" in r:
      cells += [_fmt(r["fwd_flops"], r["fwd_loop_s"]), _fmt(r["fwd_flops"], r["fwd_device_s"]),
                _fmt(r["fwd_bwd_flops"], r["fwd_bwd_loop_s"]), _fmt(r["fwd_bwd_flops"], r["fwd_bwd_device_s"])]
    else:
      why = r.get("skipped") or r.get("error") or f"check failed {r.get('check')}"
      cells += [why, "", "", ""]
    print("| " + " | ".join(cells) + " |")


def summary(rows, length: int = 16384, long_length: int = 32768) -> list[str]:
  """The issue's targets from device times: pallas_mgpu vs cuDNN at 16K causal (forward, backward =
  fwd+bwd - fwd), and window(1024,0) vs causal at 32K for both Pallas kernels."""
  by = {(r["length"], r["mask"], r["impl"]): r for r in rows if "fwd_device_s" in r}
  lines = []
  ours, cudnn = by.get((length, "causal", "pallas_mgpu")), by.get((length, "causal", "cudnn"))
  if ours and cudnn:
    bwd = lambda r: r["fwd_bwd_device_s"] - r["fwd_device_s"]
    lines.append(f"pallas_mgpu / cuDNN speed at L={length} causal (device time): forward "
                 f"{cudnn['fwd_device_s'] / ours['fwd_device_s']:.2f}x (target >= 1.0), backward "
                 f"{bwd(cudnn) / bwd(ours):.2f}x (target >= 0.9)")
  for impl in KERNELS:
    c, w = by.get((long_length, "causal", impl)), by.get((long_length, "window(1024,0)", impl))
    if c and w:
      lines.append(f"{impl} fwd at L={long_length}: window(1024,0) is {c['fwd_device_s'] / w['fwd_device_s']:.1f}x "
                   "faster than causal (target >= 8x)")
  return lines


def sweep_configs():
  """{impl: [explicit kernel configurations, the default first]} for the bf16 head-dim-128 sweep."""
  KC, MC = pallas_gpu.KernelConfig, pallas_mgpu.KernelConfig
  gpu_base = pallas_gpu.default_configs(128, jnp.bfloat16)
  gpu = [dataclasses.replace(gpu_base, fwd=f) for f in (KC(128, 64, 8, 3), KC(128, 128, 8, 3), KC(64, 64, 4, 3))]
  gpu += [dataclasses.replace(gpu_base, dkv=dkv, dq=dq) for dkv, dq in (
      (KC(64, 128, 8, 2), KC(128, 64, 8, 2)), (KC(32, 128, 4, 2), KC(128, 32, 4, 2)),
      (KC(64, 64, 4, 2), KC(64, 64, 4, 2)), (KC(128, 128, 8, 2), KC(128, 128, 8, 2)))]
  mgpu_base = pallas_mgpu.default_configs(128)
  mgpu = [dataclasses.replace(mgpu_base, fwd=f) for f in (
      MC(64, 128, 2), MC(64, 128, 2, pipeline_qk=False), MC(64, 64, 3), MC(64, 128, 3))]
  mgpu += [dataclasses.replace(mgpu_base, dkv=dkv, dq=dq) for dkv, dq in (
      (MC(64, 64, 2), MC(64, 64, 2)), (MC(64, 128, 2), MC(64, 128, 2)), (MC(128, 64, 2), MC(64, 64, 3)))]
  unique = lambda base, cs: list(dict.fromkeys([base, *cs]))  # the default first, each config once
  return {"pallas_gpu": unique(gpu_base, gpu), "pallas_mgpu": unique(mgpu_base, mgpu)}


def run_sweep(length: int, reps: int, calls: int) -> list[dict]:
  """Each explicit configuration gets its own jit (jit caches by function, so no global can leak in)."""
  b, n = bench_shapes(length)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  q, k, v, do = (jax.random.normal(kk, (b, length, n, 128), jnp.float32).astype(jnp.bfloat16) for kk in keys)
  mask = Mask(causal=True)
  fl = attention_flops(mask, length, length, n, 128, batch=b)
  fl_fb = attention_flops(mask, length, length, n, 128, batch=b, backward=True)
  print(f"== sweep: causal L={length}, B={b}, N={n}, bf16 H128 (TFLOP/s, device time)", flush=True)
  rows = []
  for impl, configs in sweep_configs().items():
    for config in configs:
      fn = impls_for(mask, {impl: config})[impl]
      row = {"impl": impl, "config": repr(config)}
      rows.append(row)
      try:
        row["check"] = verify(fn, mask)
        if row["check"]["ok"]:
          row.update(time_entry(fn, (q, k, v), (q, k, v, do), calls, reps))
          print(f"  {impl} {config}: fwd {_fmt(fl, row['fwd_device_s'])} fwd+bwd "
                f"{_fmt(fl_fb, row['fwd_bwd_device_s'])}", flush=True)
        else:
          print(f"  {impl} {config}: FAILS the check {row['check']}", flush=True)
      except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
        print(f"  {impl} {config}: error {row['error']}", flush=True)
  return rows


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--interpret", action="store_true", help="interpret mode with tiny cases (CPU smoke run)")
  p.add_argument("--skip_check", action="store_true", help="skip the correctness part")
  p.add_argument("--skip_bench", action="store_true", help="skip the speed table")
  p.add_argument("--sweep", action="store_true", help="also time alternative kernel configurations")
  p.add_argument("--impls", default="pallas_gpu,pallas_mgpu", help="kernels the correctness part checks")
  p.add_argument("--lengths", default="4096,16384,32768", help="comma-separated sequence lengths")
  p.add_argument("--reps", type=int, default=5, help="timed loops per entry (median reported)")
  p.add_argument("--calls", type=int, default=10, help="calls per jitted loop")
  p.add_argument("--json", default=None, help="write every result here (default $OUT/gpu_check.json or /tmp)")
  args = p.parse_args(argv)
  try:
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
  except ValueError:
    p.error(f"--lengths must be comma-separated ints, got {args.lengths!r}")
  if not args.lengths or min(args.lengths) < 1 or args.reps < 1 or args.calls < 1:
    p.error(f"--lengths, --reps and --calls must be positive, got {args.lengths}, {args.reps}, {args.calls}")
  args.impls = [x for x in args.impls.split(",") if x]
  if not args.impls or any(i not in KERNELS for i in args.impls):
    p.error(f"--impls must name kernels of {sorted(KERNELS)}, got {args.impls}")
  args.json = args.json or os.path.join(os.environ.get("OUT", "/tmp"), "gpu_check.json")
  return args


BENCH_MASKS = {"causal": Mask(causal=True), "window(1024,0)": Mask(window=(1024, 0))}


def main(argv=None) -> int:
  args = parse_args(argv)
  print(f"jax {jax.__version__}, python {sys.version.split()[0]}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}", flush=True)
  ok = True
  results = {"jax": jax.__version__, "device": jax.devices()[0].device_kind}
  if not args.skip_check:
    ok = run_checks(TINY_CASES if args.interpret else CASES, args.impls, interpret=args.interpret)
    print(f"correctness: {'ALL OK' if ok else 'FAILURES'}", flush=True)
    results["correctness_ok"] = ok
  if not args.skip_bench and not args.interpret:
    results["bench"] = run_bench(args.lengths, BENCH_MASKS, args.reps, args.calls)
  if args.sweep and not args.interpret:
    results["sweep"] = run_sweep(16384, args.reps, args.calls)
  dsa_ok = gpu_check_dsa.run(interpret=args.interpret, bench=not args.skip_bench, reps=args.reps)
  results["dsa_correctness_ok"] = dsa_ok
  ok &= dsa_ok
  with open(args.json, "w") as f:
    json.dump(results, f, indent=1, default=str)
  print(f"results written to {args.json}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
