"""Top-k key selection from lightning-indexer scores (DeepSeek-V3.2-Exp's token selector).

Each query keeps the top_k keys with the highest indexer score among the keys its mask lets it see. The
"xla" selector walks over query chunks, so the largest array is one chunk's [B, C, Hi, S] products and the
output is [B, T, top_k]: memory O(T*k + C*S), never a [B, T, S] array. The "reference" selector scores
everything at once, for tests.

Output contract: int32 [B, T, top_k] ordered by score (descending), ties towards the lower key index
(lax.top_k's documented order), slots past the number of visible keys hold -1.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from attention.dsa.indexer import indexer_scores
from attention.dsa.rows import chunk_len, chunk_rows
from attention.mask import element_mask
from attention.reference import positions

def visibility(mask, q_pos, kv_len: int, q_seg=None, kv_seg=None):
  """[B|1, C, S] bool: which keys each query of a chunk may see; q_pos [B|1, C], q_seg [B, C], kv_seg [B, S]."""
  k_pos = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]
  if q_seg is not None:
    q_seg, kv_seg = q_seg[:, :, None], kv_seg[:, None, :]
  return element_mask(mask, q_pos[:, :, None], k_pos, kv_len, q_seg, kv_seg)


def select(score, visible, top_k: int):
  """score [B, C, S] float32, visible [B|1, C, S] -> int32 [B, C, top_k] (-1 past the visible keys)."""
  kv_len = score.shape[-1]
  kk = min(top_k, kv_len)
  _, idx = lax.top_k(jnp.where(visible, score, -jnp.inf), kk)  # masked keys sort last, as -inf
  num_visible = jnp.sum(visible, axis=-1, dtype=jnp.int32)  # [B|1, C]
  idx = jnp.where(jnp.arange(kk, dtype=jnp.int32) < num_visible[..., None], idx, -1)
  if kk < top_k:
    idx = jnp.pad(idx, ((0, 0), (0, 0), (0, top_k - kk)), constant_values=-1)
  return idx.astype(jnp.int32)


def topk_reference(q_idx, k_idx, w, *, top_k, mask, segment_ids, kv_segment_ids, q_offset, score_dtype,
                   chunk_size):
  """Dense selector: the whole [B, T, S] score array at once (tests only)."""
  del chunk_size
  score = indexer_scores(q_idx, k_idx, w, score_dtype=score_dtype)  # [B, T, S]
  visible = visibility(mask, positions(q_idx.shape[1], q_offset), k_idx.shape[1], segment_ids, kv_segment_ids)
  return select(score, visible, top_k)


def topk_xla(q_idx, k_idx, w, *, top_k, mask, segment_ids, kv_segment_ids, q_offset, score_dtype, chunk_size):
  """Query-chunked selector: lax.map over chunks of C queries, each scoring its [B, C, S] block only."""
  b, t, hi, _ = q_idx.shape
  kv_len = k_idx.shape[1]
  c = chunk_size or chunk_len(t, b * (hi + 2) * kv_len)  # [B, C, Hi, S] products, [B, C, S] scores
  nc = -(-t // c)
  off = jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1))  # [B|1, 1]

  def one_chunk(args):
    i, qi, wi, segi = args  # qi [B, C, Hi, Di], wi [B, C, Hi], segi [B, C]
    q_pos = off + i * c + jnp.arange(c, dtype=jnp.int32)[None]  # [B|1, C]
    score = indexer_scores(qi, k_idx, wi, score_dtype=score_dtype)  # [B, C, S]
    return select(score, visibility(mask, q_pos, kv_len, segi, kv_segment_ids), top_k)

  out = lax.map(one_chunk, (jnp.arange(nc, dtype=jnp.int32), chunk_rows(q_idx, c, nc), chunk_rows(w, c, nc),
                            chunk_rows(segment_ids, c, nc)))  # [nc, B, C, top_k]
  return jnp.moveaxis(out, 0, 1).reshape(b, nc * c, top_k)[:, :t]
