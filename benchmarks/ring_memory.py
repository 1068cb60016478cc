"""Per-device compiled memory of ring attention (attention/ring.py) vs one device, by ring size.

Ring Attention (Liu et al., arXiv 2310.01889) keeps O(L/n) per device. Memory is read from
jax.jit(...).lower(...).compile().memory_analysis() (arguments + outputs + temporaries - aliased), for the
gradient of sum(attention(q, k, v)^2): forward and backward of one attention. Nothing runs, so fake CPU
devices give the per-device figure of the same program on n chips.

  python benchmarks/ring_memory.py [--length 32768] [--heads 2] [--head_dim 128]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from attention import BlockSizes, Mask, attend  # noqa: E402
from attention import ring  # noqa: E402
from attention.ring import ring_attention  # noqa: E402

ring.UNROLL_ON_CPU = False  # measure the looped ring that GPUs and TPUs run (attention/ring.py)


def per_device_mib(length, heads, head_dim, shards, *, load_balance=True, block=128):
  """Compiled per-device MiB of a train step's attention; shards=1 is plain attend(impl="xla")."""
  bs, mask = BlockSizes(block, block), Mask(causal=True)
  if shards == 1:
    sharding, attn = None, lambda q, k, v: attend(q, k, v, mask=mask, impl="xla", block_sizes=bs)
  else:
    mesh = jax.make_mesh((shards,), ("context",), axis_types=(AxisType.Auto,), devices=jax.devices()[:shards])
    sharding = NamedSharding(mesh, P(None, "context"))
    attn = lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=mask, block_sizes=bs,
                                          load_balance=load_balance)
  x = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32, sharding=sharding)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) ** 2), argnums=(0, 1, 2)))
  m = grad.lower(x, x, x).compile().memory_analysis()
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return total / 2**20


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=32768)
  parser.add_argument("--heads", type=int, default=2)
  parser.add_argument("--head_dim", type=int, default=128)
  args = parser.parse_args()
  one = per_device_mib(args.length, args.heads, args.head_dim, 1)
  print(f"L={args.length}, N={args.heads}, H={args.head_dim}, float32, causal, fwd+bwd; per-device MiB")
  print("| devices | zigzag | contiguous | one device / zigzag |")
  print("|---|---|---|---|")
  print(f"| 1 | {one:.0f} | {one:.0f} | 1.0 |")
  for n in (2, 4, 8):
    if n > jax.device_count():
      break
    zig = per_device_mib(args.length, args.heads, args.head_dim, n)
    flat = per_device_mib(args.length, args.heads, args.head_dim, n, load_balance=False)
    print(f"| {n} | {zig:.0f} | {flat:.0f} | {one / zig:.1f} |")


if __name__ == "__main__":
  main()
