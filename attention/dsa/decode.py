"""DSA decoding (T = 1): one new query against the KV cache and the indexer's own key cache.

The new token's k, v and k_idx are written at position `pos` first; the query then sits at position `pos`
(q_offset), so the causal mask hides the cache slots not written yet and the selected keys are exactly
those the full-sequence path would select for that token (DeepSeek-V3.2-Exp report, sec. 2.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.dsa import sparse_attend, topk_indices
from attention.mask import Mask


def write_cache(cache, new, pos):
  """cache [B, S, ...] with new [B, 1, ...] written at position pos (int or int32 [B]); returns the cache."""
  pos = jnp.broadcast_to(jnp.asarray(pos, jnp.int32), (cache.shape[0],))
  write = lambda c, x, p: jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), p, 0)
  return jax.vmap(write)(cache, new, pos)


def decode_step(q, k_cache, v_cache, q_idx, k_idx_cache, w, *, pos, top_k: int, mask: Mask = Mask(causal=True),
                scale=None, impl: str = "auto", topk_impl: str = "auto", score_dtype=jnp.bfloat16, local_keys: int = 0):
  """DSA for one new token whose k/v/k_idx are already in the caches at `pos`.

  Args:
    q: [B, 1, N, H]; k_cache: [B, S, K, H]; v_cache: [B, S, K, Hv] (S = cache capacity).
    q_idx: [B, 1, Hi, Di]; k_idx_cache: [B, S, Di]; w: [B, 1, Hi].
    pos: position of the new token (int or int32 [B]); slots after it are never selected.
    top_k, mask, score_dtype, local_keys: as in topk_indices; scale, impl: as in sparse_attend.
    topk_impl: impl of topk_indices.
  Returns:
    (out [B, 1, N, Hv], indices int32 [B, 1, local_keys + top_k]).
  """
  indices = topk_indices(q_idx, k_idx_cache, w, top_k=top_k, mask=mask, q_offset=pos, impl=topk_impl,
                         score_dtype=score_dtype, local_keys=local_keys)
  return sparse_attend(q, k_cache, v_cache, indices, scale=scale, impl=impl), indices
