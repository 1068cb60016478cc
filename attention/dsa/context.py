"""DSA self-attention of a full sequence, on one device or under context parallelism (mesh axis "context").

The model's DSA layers call dsa_self_attention: lightning-indexer top-k, attention over the selected keys
(or dense attention in the indexer's warm-up), and the indexer's KL loss, with the same result whether or
not the current mesh shards the sequence.

Under context parallelism each device holds a contiguous shard of T/n tokens, as attention/ring.py does
with its input. A query's top-k keys may sit on any device, so each device all-gathers what its queries
read, over the context axis:
  - the indexer keys k_idx [B, S, Di] (and the key segment ids): the top-k is then global, over all S
    keys, computed locally for the T/n local queries at q_offset = device * T/n;
  - K and V [B, S, K, H] / [B, S, K, Hv]: sparse attention gathers the selected rows from the local copy.
    For MLA-style MQA (K = 1) this is cheap next to the attention itself, and simpler than routing each
    query's k rows to their owners; the backward of the all-gather is a reduce-scatter of dK, dV (and of
    dk_idx for the KL), which shard_map's autodiff derives.
Bytes gathered per device and layer: B * S * (K * (H + Hv) + Di) * itemsize, e.g. V3.2's MLA (K=1, H=576,
Hv=512, Di=128) at S=128K in bf16: 0.3 GiB, the same on every device whatever n (table:
benchmarks/dsa_context_memory.py). The KL terms are summed over shards before the mean.
The indexer's causal work is uneven over a contiguous split (the last shard scores every key).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, PartitionSpec as P

from attention.api import attend
from attention.dsa.api import sparse_attend, topk_indices
from attention.dsa.losses import indexer_kl_terms


def _local(q, k, v, q_idx, k_idx, w, seg, kv_seg, q_offset, *, top_k, mask, sparse, with_kl, impl, topk_impl,
           score_dtype, local_keys):
  """DSA of local queries [B, T, ...] against all keys [B, S, ...]: (out, KL sum, KL count)."""
  indices = None
  if sparse:
    indices = topk_indices(q_idx, k_idx, w, top_k=min(top_k, k.shape[1]), mask=mask, segment_ids=seg,
                           kv_segment_ids=kv_seg, q_offset=q_offset, impl=topk_impl, score_dtype=score_dtype,
                           local_keys=local_keys)
    out = sparse_attend(q, k, v, indices, impl=impl)
  else:
    out = attend(q, k, v, mask=mask, segment_ids=seg, kv_segment_ids=kv_seg, q_offset=q_offset, impl=impl)
  total = count = jnp.zeros((), jnp.float32)
  if with_kl:
    total, count = indexer_kl_terms(q, k, q_idx, k_idx, w, mask=mask, segment_ids=seg, kv_segment_ids=kv_seg,
                                    q_offset=q_offset, indices=indices)
  return out, total.astype(jnp.float32), count.astype(jnp.float32)


def _batch_axes(mesh, batch: int, axis_name: str) -> tuple[str, ...]:
  """The mesh axes (of data, fsdp) that shard the batch of `batch` rows: those of size > 1 whose product
  divides it, in mesh order."""
  axes, size = [], 1
  for name in ("data", "fsdp"):
    if (name != axis_name and name in mesh.axis_names and mesh.shape[name] > 1
        and batch % (size * mesh.shape[name]) == 0):
      axes.append(name)
      size *= mesh.shape[name]
  return tuple(axes)


def dsa_self_attention(q, k, v, q_idx, k_idx, w, *, top_k: int, mask, segment_ids=None, sparse: bool = True,
                       with_kl: bool = False, impl: str = "auto", topk_impl: str = "auto", score_dtype=jnp.bfloat16,
                       local_keys: int = 0, axis_name: str = "context"):
  """DSA self-attention of a sequence and its indexer loss; context-parallel under a mesh with `axis_name`.

  Args:
    q: [B, L, N, H], k: [B, L, K, H], v: [B, L, K, Hv] main attention inputs, natural token order.
    q_idx: [B, L, Hi, Di], k_idx: [B, L, Di], w: [B, L, Hi] lightning-indexer inputs.
    top_k: keys per query (capped at L). mask: the layer's mask. segment_ids: [B, L] int or None.
    sparse: attend over the top-k keys (V3.2's sparse stage); False: dense attention (the warm-up).
    with_kl: also return the indexer KL loss (over the selected keys when sparse).
    impl: sparse_attend / attend impl; topk_impl: topk_indices impl; score_dtype: the indexer's precision.
    local_keys: each query also attends to its this many most recent keys (topk_indices' local_keys).
    axis_name: the mesh axis that shards L (when the current mesh has it with size > 1).
  Returns:
    (out [B, L, N, Hv], KL float32 scalar, 0 unless with_kl).
  """
  kw = dict(top_k=top_k, mask=mask, sparse=sparse, with_kl=with_kl, impl=impl, topk_impl=topk_impl,
            score_dtype=score_dtype, local_keys=local_keys)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis_name not in mesh.axis_names or mesh.shape[axis_name] == 1:
    out, total, count = _local(q, k, v, q_idx, k_idx, w, segment_ids, segment_ids, 0, **kw)
    return out, total / jnp.maximum(count, 1.0)
  n = mesh.shape[axis_name]
  if AxisType.Explicit in mesh.axis_types:
    raise NotImplementedError(f"DSA under context parallelism needs a mesh of Auto axes, got {mesh.axis_types}")
  if q.shape[1] % n:
    raise ValueError(f"sequence length L={q.shape[1]} must be divisible by the {axis_name!r} axis size {n}")

  def shard(q, k, v, q_idx, k_idx, w, *seg):
    gather = functools.partial(lax.all_gather, axis_name=axis_name, axis=1, tiled=True)
    seg, kv_seg = (seg[0], gather(seg[0])) if seg else (None, None)
    q_offset = lax.axis_index(axis_name) * q.shape[1]  # contiguous shards: device d holds [d*T, (d+1)*T)
    out, total, count = _local(q, gather(k), gather(v), q_idx, gather(k_idx), w, seg, kv_seg, q_offset, **kw)
    return out, total[None], count[None]  # per-device terms, summed outside (an in-shard psum's
    # transpose would scale the gradient by n without replication checks)

  # The batch axes are manual too: left to the partitioner, the blocked top-k's loop all-gathers the whole
  # batch at every key block (its lax.top_k inside a dynamic-bound while loop loses the batch sharding),
  # which costs a batch-sized transfer per block and, on XLA:CPU, can deadlock against the collectives
  # outside the loop. Rows are independent, so a device only ever needs its own rows.
  batch = _batch_axes(mesh, q.shape[0], axis_name)
  rows = batch or None  # the batch dimension's entry in the PartitionSpecs
  args = (q, k, v, q_idx, k_idx, w) + (() if segment_ids is None else (segment_ids,))
  out, total, count = jax.shard_map(shard, mesh=mesh, in_specs=P(rows, axis_name),
                                    out_specs=(P(rows, axis_name), P((*batch, axis_name)), P((*batch, axis_name))),
                                    axis_names={axis_name, *batch}, check_vma=False)(*args)
  return out, jnp.sum(total) / jnp.maximum(jnp.sum(count), 1.0)
