"""DeepSeek Sparse Attention vs dense FlashAttention: FLOPs, compiled memory and CPU time vs length.

Method:
- FLOPs, counted analytically (XLA's cost_analysis() counts a loop body once whatever its trip count):
  dense = causal blockwise attention, tiles visited by the block map x tile FLOPs
  (attention.attention_flops, forward+backward); sparse attention = every one of the k slots of every
  query, as the kernels compute them (empty slots included), forward+backward; indexer = the Hi products
  and the weighted ReLU sum over the (query chunk, key block) tiles of the causal block map, as the xla
  selector visits them, forward only (top-k selection has no gradient; the indexer's KL loss in the sparse
  phase touches only the k selected keys). The top-k merges are comparisons, not FLOPs, and not counted.
- memory: temp bytes of the compiled programs (jax.jit(...).lower(...).compile().memory_analysis()), compile
  only: dense = attend(impl="xla") forward+backward, sparse = sparse_attend(impl="xla") forward+backward,
  indexer = topk_indices(impl="xla"); for contrast, the dense O(L^2) reference attention forward+backward.
- time: CPU wall time of the jitted forward passes (dense attend vs topk_indices + sparse_attend) on a small
  configuration, median of a few runs, only at lengths that fit.

Default shapes follow DeepSeek-V3.2 (MLA in MQA mode, as DSA is instantiated): N=128 query heads sharing one
kv head of dim 576 (512 latent + 64 RoPE) with Hv=512; indexer Hi=64 heads of Di=128; k=2048.

  python -m benchmarks.dsa_benchmark [--lengths=4096,...,65536] [--out_prefix=docs/results/dsa]
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp

from attention import (BlockSizes, Mask, attend, attention_flops, block_map, sparse_attend, topk_indices,
                       xla_flash)
from benchmarks.common import loglog_plot, time_fn

_SD = jax.ShapeDtypeStruct


def dense_flops(length, n, h, hv):
  return attention_flops(Mask(causal=True), length, length, n, h, hv, block_sizes=xla_flash.DEFAULT_BLOCK_SIZES,
                         backward=True)


def sparse_flops(length, top_k, n, h, hv):
  """QK^T and PV forward; recomputed QK^T, dV, dP, dQ, dK backward; over k slots per query."""
  return 2 * n * length * top_k * ((h + hv) + (3 * h + 2 * hv))


def indexer_flops(length, top_k, hi, di, chunk=256):
  """q_idx . k_idx for Hi heads, then the w-weighted ReLU sum, over the (query chunk, key block) tiles the
  causal block map visits (the xla selector's key blocks are max(512, k) wide)."""
  bs = BlockSizes(chunk, min(length, max(512, top_k)))
  tiles = block_map(Mask(causal=True), length, length, bs).num_visited()
  return tiles * bs.block_q * bs.block_k * hi * (2 * di + 2)


def _temp(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def memory(length, top_k, n, kv, h, hv, hi, di, dtype=jnp.bfloat16):
  """Compiled temp bytes: (dense reference fwd+bwd, dense xla fwd+bwd, sparse xla fwd+bwd, indexer top-k)."""
  q, k, v = _SD((1, length, n, h), dtype), _SD((1, length, kv, h), dtype), _SD((1, length, kv, hv), dtype)
  idx = _SD((1, length, top_k), jnp.int32)
  loss = lambda f: jax.grad(lambda q, k, v, *a: f(q, k, v, *a).astype(jnp.float32).sum(), argnums=(0, 1, 2))
  dense = _temp(loss(lambda q, k, v: attend(q, k, v, mask=Mask(causal=True), impl="xla")), q, k, v)
  reference = _temp(loss(lambda q, k, v: attend(q, k, v, mask=Mask(causal=True), impl="reference")), q, k, v)
  sparse = _temp(loss(lambda q, k, v, i: sparse_attend(q, k, v, i, impl="xla")), q, k, v, idx)
  indexer = _temp(lambda a, b, c: topk_indices(a, b, c, top_k=top_k, impl="xla"), _SD((1, length, hi, di), dtype),
                  _SD((1, length, di), dtype), _SD((1, length, hi), jnp.float32))
  return reference, dense, sparse, indexer


def cpu_times(length, top_k, n, h, hi, di):
  """Forward wall time (s) of dense causal attend and of topk_indices + sparse_attend, float32, B=1, K=1."""
  ks = jax.random.split(jax.random.key(0), 6)
  q = jax.random.normal(ks[0], (1, length, n, h))
  k, v = jax.random.normal(ks[1], (1, length, 1, h)), jax.random.normal(ks[2], (1, length, 1, h))
  qi, ki = jax.random.normal(ks[3], (1, length, hi, di)), jax.random.normal(ks[4], (1, length, di))
  w = jax.random.normal(ks[5], (1, length, hi))
  dense = jax.jit(lambda q, k, v: attend(q, k, v, mask=Mask(causal=True), impl="xla"))
  select = jax.jit(lambda qi, ki, w: topk_indices(qi, ki, w, top_k=top_k, impl="xla"))
  attend_sparse = jax.jit(lambda q, k, v, i: sparse_attend(q, k, v, i, impl="xla"))
  idx = select(qi, ki, w)
  return time_fn(dense, (q, k, v)), time_fn(select, (qi, ki, w)), time_fn(attend_sparse, (q, k, v, idx))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="4096,8192,16384,32768,65536")
  parser.add_argument("--top_k", type=int, default=2048)
  parser.add_argument("--heads", type=int, default=128)
  parser.add_argument("--kv_heads", type=int, default=1)
  parser.add_argument("--head_dim", type=int, default=576)
  parser.add_argument("--head_dim_v", type=int, default=512)
  parser.add_argument("--index_heads", type=int, default=64)
  parser.add_argument("--index_dim", type=int, default=128)
  parser.add_argument("--time_lengths", default="1024,2048,4096", help="CPU timing lengths ('' for none)")
  parser.add_argument("--time_top_k", type=int, default=256)
  parser.add_argument("--out_prefix", default="docs/results/dsa", help="writes <prefix>_flops.png, <prefix>_memory.png")
  a = parser.parse_args()
  lengths = [int(x) for x in a.lengths.split(",")]
  n, kv, h, hv, hi, di, top_k = a.heads, a.kv_heads, a.head_dim, a.head_dim_v, a.index_heads, a.index_dim, a.top_k
  print(f"# causal, B=1, N={n}, K={kv}, H={h}, Hv={hv}, indexer Hi={hi} Di={di}, k={top_k}, bf16; "
        f"{platform.processor() or 'cpu'}, {jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print("| L | dense TFLOP | indexer TFLOP | sparse attn TFLOP | DSA / dense FLOPs | dense reference GiB "
        "| dense flash GiB | indexer GiB | sparse attn GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  fl = {"dense flash": [], "DSA total": [], "indexer": [], "sparse attention": []}
  mem = {"dense reference": [], "dense flash (xla)": [], "indexer top-k (xla)": [], "sparse attention (xla)": []}
  for length in lengths:
    d, i = dense_flops(length, n, h, hv), indexer_flops(length, top_k, hi, di)
    s = sparse_flops(length, top_k, n, h, hv)
    mr, md, ms, mi = (x / 2**30 for x in memory(length, top_k, n, kv, h, hv, hi, di))
    for key, val in zip(fl, (d, i + s, i, s)):
      fl[key].append(val / 1e12)
    for key, val in zip(mem, (mr, md, mi, ms)):
      mem[key].append(val)
    print(f"| {length} | {d / 1e12:,.1f} | {i / 1e12:,.2f} | {s / 1e12:,.1f} | {(i + s) / d:.2f} | {mr:,.0f} "
          f"| {md:,.2f} | {mi:,.2f} | {ms:,.2f} |", flush=True)
  if a.time_lengths:
    th, tn, thi, tdi = 64, 4, 4, 32
    print(f"\n# CPU forward wall time (s): causal, B=1, N={tn}, K=1, H={th}, indexer Hi={thi} Di={tdi}, "
          f"k={a.time_top_k}, float32")
    print("| L | dense flash (xla) | indexer top-k | sparse attention | DSA total |")
    print("|---|---|---|---|---|")
    for length in (int(x) for x in a.time_lengths.split(",")):
      td, ti, ts = cpu_times(length, a.time_top_k, tn, th, thi, tdi)
      print(f"| {length} | {td:.3f} | {ti:.3f} | {ts:.3f} | {ti + ts:.3f} |", flush=True)
  if a.out_prefix:
    loglog_plot(f"{a.out_prefix}_flops.png", lengths, fl, "TFLOP (forward+backward; indexer forward)",
          f"DSA vs dense causal attention, k={top_k}")
    loglog_plot(f"{a.out_prefix}_memory.png", lengths, mem, "compiled temp memory (GiB)",
          f"DSA vs dense causal attention, k={top_k}")


if __name__ == "__main__":
  main()
