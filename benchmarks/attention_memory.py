"""Memory, FLOPs and CPU time of attention implementations vs sequence length.

Method:
- memory: temp bytes of the compiled forward+backward (jax.jit(vjp).lower(...).compile().memory_analysis()),
  deterministic, compile only, so even the dense reference at 32K (a 32 GiB score array) is measured;
- FLOPs: counted from the block map, tiles visited x tile FLOPs (attention.attention_flops), because XLA's
  cost_analysis() counts a loop body once whatever its trip count; the reference visits every tile;
- time: CPU wall time of the jitted forward+backward after compilation, median of a few runs, only where
  it fits (reference up to --max_time_len_ref, xla up to --max_time_len);
- the Pallas kernels (--pallas): FLOPs from the block map with each kernel's default tiles (the forward
  kernel's for pallas_gpu; its backward kernels use their own). Their memory needs the hardware's own
  compiler (Triton / Mosaic), so it is measured on the device, not here.

  python -m benchmarks.attention_memory [--lengths=1024,...] [--out=docs/results/attention_memory.png]
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp

from attention import BlockSizes, Mask, attend, attention_flops, pallas_gpu, pallas_tpu, xla_flash
from benchmarks.common import loglog_plot, time_fn

IMPLS = ("reference", "xla")


def fwd_bwd(impl, mask):
  """Jitted (out, grads) of attend for a random cotangent."""

  def run(q, k, v, ct):
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask=mask, impl=impl), q, k, v)
    return out, vjp(ct)

  return jax.jit(run)


def temp_bytes(impl, mask, shape, dtype=jnp.float32):
  spec = jax.ShapeDtypeStruct(shape, dtype)
  return fwd_bwd(impl, mask).lower(spec, spec, spec, spec).compile().memory_analysis().temp_size_in_bytes


def default_tiles(impl, h, dtype=jnp.float32) -> BlockSizes:
  """The tiles an impl uses by default for head dim h."""
  if impl == "pallas_gpu":
    fwd = pallas_gpu.default_configs(h, dtype).fwd
    return BlockSizes(fwd.block_q, fwd.block_k)
  if impl == "pallas_tpu":
    return pallas_tpu.DEFAULT_BLOCK_SIZES[min(d for d in pallas_tpu.DEFAULT_BLOCK_SIZES if d >= h)]
  return xla_flash.DEFAULT_BLOCK_SIZES


def flops(impl, mask, length, n, h):
  if impl == "reference":  # dense: every tile, no skipping
    return attention_flops(Mask(), length, length, n, h, backward=True)
  return attention_flops(mask, length, length, n, h, block_sizes=default_tiles(impl, h), backward=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--max_time_len", type=int, default=8192, help="time the xla impl up to this L")
  parser.add_argument("--max_time_len_ref", type=int, default=4096, help="time the reference up to this L")
  parser.add_argument("--out", default="docs/results/attention_memory.png", help="PNG plot ('' for none)")
  parser.add_argument("--pallas", action=argparse.BooleanOptionalAction, default=True,
                      help="also print the Pallas kernels' block-map FLOPs")
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  mask = Mask(causal=True)
  n, h = args.heads, args.head_dim
  print(f"# causal attention, B=1, N={n}, H={h}, float32, forward+backward; {platform.processor() or 'cpu'}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print("| L | impl | temp memory (MiB) | GFLOP (block map) | CPU time (s) |")
  print("|---|---|---|---|---|")
  mem = {impl: [] for impl in IMPLS}
  for length in lengths:
    shape = (1, length, n, h)
    for impl in IMPLS:
      mib = temp_bytes(impl, mask, shape) / 2**20
      mem[impl].append(mib)
      limit = args.max_time_len_ref if impl == "reference" else args.max_time_len
      secs = "-"
      if length <= limit:
        x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
        secs = f"{time_fn(fwd_bwd(impl, mask), (x, x, x, x)):.3f}"
      print(f"| {length} | {impl} | {mib:,.1f} | {flops(impl, mask, length, n, h) / 1e9:,.1f} | {secs} |",
            flush=True)
    for kernel in ("pallas_gpu", "pallas_tpu") if args.pallas else ():
      print(f"| {length} | {kernel} | on the device | {flops(kernel, mask, length, n, h) / 1e9:,.1f} | - |")
  for impl in IMPLS:
    growth = mem[impl][-1] / mem[impl][0]
    print(f"{impl}: memory grows {growth:.1f}x from L={lengths[0]} to L={lengths[-1]} "
          f"({lengths[-1] // lengths[0]}x the tokens)")
  if args.out:
    loglog_plot(args.out, lengths, {impl: mem[impl] for impl in IMPLS}, "compiled temp memory, fwd+bwd (MiB)",
                f"Causal attention memory (N={n}, H={h}, f32)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
