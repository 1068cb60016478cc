"""Top-k key selection from lightning-indexer scores (DeepSeek-V3.2-Exp's token selector).

Each query keeps the top_k keys with the highest indexer score among the keys its mask lets it see. The
"xla" selector walks over chunks of C queries, and for each chunk over exactly the key blocks of
attention.mask.block_map (causal: the keys up to the chunk's last query; a window: the keys in it), merging
each block's scores into a running top-k. Causal selection thus scores half the (query, key) pairs, the
largest array is one chunk's [B, C, Hi, bk] products, and memory is O(T*k + C*(k + bk)): never a [B, T, S]
array. The "reference" selector scores everything at once, for tests.

The running merge keeps the contract's tie order: the running list (lower key indices, already in order)
comes before the new block in the concatenation, and lax.top_k prefers the earlier of equal elements.

Output contract: int32 [B, T, top_k] ordered by score (descending), ties towards the lower key index
(lax.top_k's documented order), slots past the number of visible keys hold -1.

with_local_keys puts a sliding window in front of any selector's output: each query's W most recent visible
keys, then the indexer's best top_k among the keys farther back (topk_indices' local_keys).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from attention.dsa.indexer import indexer_scores
from attention.dsa.rows import chunk_len, chunk_rows, unchunk_rows
from attention.kernel_utils import pad_axis
from attention.mask import BlockSizes, block_map, element_mask
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


def with_local_keys(far, top_k: int, local_keys: int, *, mask, kv_len: int, q_offset, segment_ids=None,
                    kv_segment_ids=None):
  """A selection with each query's `local_keys` (W) most recent keys in front of the indexer's choice.

  far: int32 [B, T, top_k + W], a selector's output (best first, -1 past the visible keys); mask causal.
  Returns int32 [B, T, W + top_k]: slots 0..W-1 the keys at q, q-1, ..., q-W+1 that the mask lets the query see
  (-1 where it sees none), then far's best top_k keys outside that window, in far's order, -1 past them. As
  at most W of far's keys fall in the window, those are exactly the top_k best among the keys farther back.
  """
  b, t, _ = far.shape
  q_pos = jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1)) + jnp.arange(t, dtype=jnp.int32)  # [B|1, T]
  local = q_pos[:, :, None] - jnp.arange(local_keys, dtype=jnp.int32)  # [B|1, T, W], nearest first
  q_seg = k_seg = None
  if segment_ids is not None:
    safe = jnp.broadcast_to(jnp.clip(local, 0, kv_len - 1), (b, t, local_keys))
    q_seg, k_seg = segment_ids[:, :, None], jnp.take_along_axis(kv_segment_ids[:, None, :], safe, axis=2)
  visible = (local >= 0) & element_mask(mask, q_pos[:, :, None], local, kv_len, q_seg, k_seg)
  local = jnp.where(visible, local, -1)  # [B, T, W] (or [1, T, W] without segments or per-row offsets)
  keep = (far >= 0) & (far <= q_pos[:, :, None] - local_keys)  # far keys outside the window
  order = jnp.argsort(~keep, axis=-1, stable=True)[..., :top_k]  # the kept slots first, far's order kept
  far = jnp.where(jnp.take_along_axis(keep, order, -1), jnp.take_along_axis(far, order, -1), -1)
  return jnp.concatenate([jnp.broadcast_to(local, (b, t, local_keys)), far], axis=-1).astype(jnp.int32)


def topk_reference(q_idx, k_idx, w, *, top_k, mask, segment_ids, kv_segment_ids, q_offset, score_dtype,
                   chunk_size, interpret):
  """Dense selector: the whole [B, T, S] score array at once (tests only)."""
  del chunk_size, interpret
  score = indexer_scores(q_idx, k_idx, w, score_dtype=score_dtype)  # [B, T, S]
  visible = visibility(mask, positions(q_idx.shape[1], q_offset), k_idx.shape[1], segment_ids, kv_segment_ids)
  return select(score, visible, top_k)


def topk_xla(q_idx, k_idx, w, *, top_k, mask, segment_ids, kv_segment_ids, q_offset, score_dtype, chunk_size,
             interpret, block_k=None):
  """Blocked selector: for each chunk of C queries, a running top-k over the key blocks its mask can see."""
  del interpret
  b, t, hi, _ = q_idx.shape
  kv_len = k_idx.shape[1]
  kk = min(top_k, kv_len)
  bk = block_k or min(kv_len, max(512, kk))
  c = chunk_size or chunk_len(t, b * ((hi + 2) * bk + 2 * (kk + bk)))  # products, scores, merge buffers
  nc, nk = -(-t // c), -(-kv_len // bk)
  bm = block_map(mask, t, kv_len, BlockSizes(c, bk), has_segments=segment_ids is not None, q_offset=q_offset)
  kv_start, kv_end = jnp.asarray(bm.kv_start), jnp.asarray(bm.kv_end)
  k_blocks = pad_axis(k_idx, 1, nk * bk)
  kv_seg = None if kv_segment_ids is None else pad_axis(kv_segment_ids, 1, nk * bk)
  off = jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1))  # [B|1, 1]

  def one_chunk(args):
    i, qi, wi, segi = args  # qi [B, C, Hi, Di], wi [B, C, Hi], segi [B, C]
    q_pos = (off + i * c + jnp.arange(c, dtype=jnp.int32)[None])[:, :, None]  # [B|1, C, 1]

    def block(j, carry):
      vals, idx, count = carry  # [B, C, kk] scores and keys so far (best first), [B, C] visible keys
      k_pos = j * bk + jnp.arange(bk, dtype=jnp.int32)  # [bk]
      score = indexer_scores(qi, lax.dynamic_slice_in_dim(k_blocks, j * bk, bk, 1), wi,
                             score_dtype=score_dtype)  # [B, C, bk]
      k_seg = None if segi is None else lax.dynamic_slice_in_dim(kv_seg, j * bk, bk, 1)[:, None, :]
      visible = element_mask(mask, q_pos, k_pos[None, None, :], kv_len,
                             None if segi is None else segi[:, :, None], k_seg)  # [B|1, C, bk]
      visible = jnp.broadcast_to(visible, score.shape)
      cand = jnp.concatenate([vals, jnp.where(visible, score, -jnp.inf)], axis=-1)  # [B, C, kk + bk]
      cand_idx = jnp.concatenate([idx, jnp.broadcast_to(k_pos, score.shape)], axis=-1)
      vals, pos = lax.top_k(cand, kk)
      return vals, jnp.take_along_axis(cand_idx, pos, axis=-1), count + visible.sum(-1, dtype=jnp.int32)

    init = (jnp.full((b, c, kk), -jnp.inf, jnp.float32), jnp.full((b, c, kk), -1, jnp.int32),
            jnp.zeros((b, c), jnp.int32))
    _, idx, count = lax.fori_loop(kv_start[i], kv_end[i], block, init)
    idx = jnp.where(jnp.arange(kk, dtype=jnp.int32) < count[..., None], idx, -1)  # -1 past the visible keys
    return pad_axis(idx, 2, top_k, -1)

  out = lax.map(one_chunk, (jnp.arange(nc, dtype=jnp.int32), chunk_rows(q_idx, c, nc), chunk_rows(w, c, nc),
                            chunk_rows(segment_ids, c, nc)))  # [nc, B, C, top_k]
  return unchunk_rows(out, t)
