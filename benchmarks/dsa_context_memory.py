"""Per-device compiled memory of DSA under context parallelism (attention/dsa/context.py), by shard count.

One DSA layer's training step in the sparse phase: top-k selection, sparse attention over the selected
keys and the indexer's KL loss, forward and backward (gradients of q, k, v, q_idx, k_idx, w). Memory is
read from jax.jit(...).lower(...).compile().memory_analysis() (arguments + outputs + temporaries -
aliased); nothing runs, so fake CPU devices give the per-device figure of the same program on n chips
(XLA:CPU's buffer assignment and the CPU chunk sizes of attention.dsa.rows). "gathered" is the K/V and
indexer keys each device all-gathers: B * S * (K * (H + Hv) + Di) * 2 bytes.

  python -m benchmarks.dsa_context_memory [--lengths 32768,131072] [--shards 1,8] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from attention import Mask  # noqa: E402
from attention.dsa import dsa_self_attention  # noqa: E402

# DeepSeek-V3.2's MLA in MQA mode and its indexer, with 16 query heads instead of 128 (compile time).
SHAPES = dict(n=16, kv=1, h=576, hv=512, hi=64, di=128, top_k=2048)


def per_device_bytes(length: int, shards: int, *, n, kv, h, hv, hi, di, top_k) -> int:
  """Compiled per-device bytes of one DSA layer's forward + backward at sequence length `length`."""
  mesh = jax.make_mesh((shards,), ("context",), axis_types=(AxisType.Auto,), devices=jax.devices()[:shards])
  sharding = NamedSharding(mesh, P(None, "context"))
  sd = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  args = (sd((1, length, n, h)), sd((1, length, kv, h)), sd((1, length, kv, hv)), sd((1, length, hi, di)),
          sd((1, length, di)), sd((1, length, hi), jnp.float32))

  def loss(*xs):
    out, kl = dsa_self_attention(*xs, top_k=top_k, mask=Mask(causal=True), with_kl=True, impl="xla",
                                 topk_impl="xla")
    return jnp.sum(out.astype(jnp.float32) ** 2) + kl

  with jax.set_mesh(mesh):
    m = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).lower(*args).compile().memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", default="32768,131072")
  p.add_argument("--shards", default="1,8")
  p.add_argument("--json", default="", help="write the rows here")
  args = p.parse_args(argv)
  lengths = [int(x) for x in args.lengths.split(",")]
  shard_counts = [int(x) for x in args.shards.split(",")]
  s = SHAPES
  rows = []
  print(f"one DSA layer, fwd+bwd, bf16, B=1, {s}; per-device GiB (compiled on the CPU backend)")
  print("| L | devices | per device GiB | gathered K/V + k_idx GiB |\n|---|---|---|---|")
  for length in lengths:
    for shards in shard_counts:
      total = per_device_bytes(length, shards, **s)
      gathered = length * (s["kv"] * (s["h"] + s["hv"]) + s["di"]) * 2 if shards > 1 else 0
      rows.append(dict(length=length, shards=shards, per_device_bytes=int(total), gathered_bytes=gathered, **s))
      print(f"| {length // 1024}K | {shards} | {total / 2**30:.2f} | {gathered / 2**30:.2f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
