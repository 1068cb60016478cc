"""The public attention API: attend() and the registry of implementations.

`what` a layer computes is the Mask (and, for DSA, the selected indices); `how` it is computed is the impl
string, looked up in one table (attention.registry.REGISTRY). "auto" picks the fastest correct impl for the
default backend and logs its choice once; nothing falls back silently.
"""

from __future__ import annotations

import numpy as np

from attention.checks import validate, validate_qkv
from attention.mask import BlockMap, BlockSizes, Mask, attention_flops, block_map, element_mask
from attention.registry import REGISTRY, Impl, resolve_impl


def attend(q, k, v, *, mask: Mask = Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0, scale=None,
           impl: str = "auto", interpret: bool | None = None, block_sizes: BlockSizes | None = None):
  """Exact attention; q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv] -> [B, T, N, Hv].

  Args:
    mask: causal and/or sliding window (see attention.Mask).
    segment_ids: [B, T] int; a query sees a key only with an equal id (kv_segment_ids [B, S] defaults
      to segment_ids).
    q_offset: position of the first query (int or int32 [B]); causal and window compare positions.
    scale: logit scale, default 1/sqrt(H).
    impl: "reference" | "xla" | "pallas" | "pallas_gpu" | "pallas_tpu" | "cudnn" | "auto".
    interpret: Pallas interpret mode; None means "exactly when the default backend is the CPU".
    block_sizes: optional tile sizes overriding the impl's default table.
  Returns:
    [B, T, N, Hv] in q's dtype; a query that sees no key gets zeros.
  """
  validate(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_offset=q_offset)
  if scale is not None and not isinstance(scale, (int, float)):
    raise ValueError(f"scale must be a Python number or None, got {scale!r}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be an attention.BlockSizes, got {block_sizes!r}")
  name, interpret = resolve_impl(impl, interpret)
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  if isinstance(q_offset, np.integer):
    q_offset = int(q_offset)
  return REGISTRY[name].fn(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                           q_offset=q_offset, scale=scale, interpret=interpret, block_sizes=block_sizes)


# After attend: attention.dsa.context (DSA under context parallelism) calls attend.
from attention.dsa import indexer_kl_loss, sparse_attend, topk_indices  # noqa: E402

__all__ = ["Mask", "BlockSizes", "BlockMap", "Impl", "REGISTRY", "attend", "attention_flops", "block_map",
           "element_mask", "resolve_impl", "validate", "validate_qkv", "indexer_kl_loss", "sparse_attend",
           "topk_indices"]
