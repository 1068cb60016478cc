"""attend(): exact attention through the registry of implementations.

`what` a layer computes is the Mask (and, for DSA, the selected indices: attention.dsa.api); `how` it is
computed is the impl string, looked up in one table (attention.registry.REGISTRY). "auto" picks the fastest
correct impl for the default backend and logs its choice once; nothing falls back silently.
"""

from __future__ import annotations

import numpy as np

from attention.checks import check_scale, validate
from attention.kernel_utils import default_scale
from attention.mask import BlockSizes, Mask
from attention.registry import REGISTRY, resolve_impl


def attend(q, k, v, *, mask: Mask = Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0, scale=None,
           impl: str = "auto", interpret: bool | None = None, block_sizes: BlockSizes | None = None):
  """Exact attention; q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv] -> [B, T, N, Hv].

  Args:
    mask: causal and/or sliding window (see attention.Mask).
    segment_ids: [B, T] int; a query sees a key only with an equal id (kv_segment_ids [B, S] defaults
      to segment_ids).
    q_offset: position of the first query (int or int32 [B]); causal and window compare positions.
    scale: logit scale, default 1/sqrt(H).
    impl: "reference" | "xla" | "pallas" | "pallas_gpu" | "pallas_tpu" | "pallas_mgpu" | "cudnn" | "auto".
    interpret: Pallas interpret mode; None means "exactly when the default backend is the CPU".
    block_sizes: optional tile sizes overriding the impl's default table.
  Returns:
    [B, T, N, Hv] in q's dtype; a query that sees no key gets zeros.
  """
  validate(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_offset=q_offset)
  check_scale(scale)
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be an attention.BlockSizes, got {block_sizes!r}")
  name, interpret = resolve_impl(impl, interpret)
  if isinstance(q_offset, np.integer):
    q_offset = int(q_offset)
  return REGISTRY[name].fn(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                           q_offset=q_offset, scale=default_scale(q.shape[-1], scale), interpret=interpret,
                           block_sizes=block_sizes)


__all__ = ["attend"]
