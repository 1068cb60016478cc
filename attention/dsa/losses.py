"""Indexer training loss of DeepSeek Sparse Attention (DeepSeek-V3.2-Exp report, sec. 2.1, "continued
pre-training": dense warm-up stage and sparse training stage).

Target: p_t, the main attention distribution of query t summed over all heads and L1-normalised, under
stop_gradient. Indexer distribution: softmax(score_t) over the keys query t may see. Loss: KL(p_t ||
softmax(score_t)), averaged over the queries that see at least one key.

- Dense warm-up (indices=None): over all visible keys, computed blockwise over query chunks, so the largest
  array is one chunk's [B, C, N, S] logits (never [T, S]); each chunk is rematerialised in the backward
  pass, so the saved residuals stay O(T) too.
- Sparse phase (indices given): both distributions restricted to the selected keys and renormalised.

Gradients reach only q_idx, k_idx and w: the target is stop_gradient'ed. Detaching the indexer's *input*
(so the KL trains only the indexer and the LM loss only the model) is the caller's job.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from attention.checks import check_q_offset, check_segments
from attention.dsa.indexer import indexer_scores
from attention.dsa.rows import chunk_len, chunk_rows, gather_rows
from attention.dsa.topk import visibility
from attention.kernel_utils import default_scale
from attention.mask import Mask, element_mask

def _masked_softmax(s, visible):
  """Softmax over the last axis restricted to `visible`; rows with nothing visible give zeros."""
  s = jnp.where(visible, s, -jnp.inf)
  m = s.max(-1, keepdims=True)
  e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
  z = e.sum(-1, keepdims=True)
  return e / jnp.where(z == 0, 1.0, z)


def _masked_log_softmax(s, visible):
  s = jnp.where(visible, s, -jnp.inf)
  m = lax.stop_gradient(s.max(-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  lse = m + jnp.log(jnp.sum(jnp.exp(s - m), -1, keepdims=True))
  return s - lse


def _kl(p, score, visible):
  """Sum over rows of KL(p || softmax(score)) restricted to `visible` ([B, C, X] each), and the row count."""
  logq = _masked_log_softmax(score, visible)
  logp = jnp.log(jnp.where(p > 0, p, 1.0))
  kl_rows = jnp.sum(jnp.where(p > 0, p * (logp - jnp.where(visible, logq, 0.0)), 0.0), -1)  # [B, C]
  has_key = jnp.any(visible, -1)
  return jnp.sum(jnp.where(has_key, kl_rows, 0.0)), jnp.sum(has_key)


def _target(s_main, visible):
  """s_main [B, C, K, G, X] logits -> p [B, C, X]: softmax per head, summed over heads, L1-normalised."""
  p = _masked_softmax(s_main, visible[:, :, None, None]).sum((2, 3))
  z = p.sum(-1, keepdims=True)
  return lax.stop_gradient(p / jnp.where(z == 0, 1.0, z))


def indexer_kl_loss(q, k, q_idx, k_idx, w, *, mask: Mask = Mask(causal=True), segment_ids=None, kv_segment_ids=None,
                    q_offset=0, indices=None, scale=None, chunk_size: int | None = None):
  """KL(p_t || softmax(indexer score_t)), the V3.2 indexer loss; a float32 scalar.

  Args:
    q: [B, T, N, H], k: [B, S, K, H] main attention queries / keys (only their softmax is used, detached).
    q_idx: [B, T, Hi, Di], k_idx: [B, S, Di], w: [B, T, Hi] the indexer's inputs (receive the gradients).
    mask: the main attention's mask (positions as in attend(): key j at j, query i at q_offset + i).
    segment_ids: [B, T] int; kv_segment_ids: [B, S] int (defaults to segment_ids, which needs T == S).
    q_offset: position of the first query (int or int32 [B]): a chunk of a longer sequence, or this
      device's shard of it under context parallelism.
    indices: None for the dense warm-up; int32 [B, T, k] (-1 empty) for the sparse phase.
    scale: main attention logit scale, default 1/sqrt(H).
    chunk_size: queries per chunk (default: a fixed per-backend working set, see attention.dsa.rows).
  Returns:
    float32 scalar: the mean over queries that see at least one key.
  """
  total, count = indexer_kl_terms(q, k, q_idx, k_idx, w, mask=mask, segment_ids=segment_ids,
                                  kv_segment_ids=kv_segment_ids, q_offset=q_offset, indices=indices, scale=scale,
                                  chunk_size=chunk_size)
  return (total / jnp.maximum(count, 1)).astype(jnp.float32)


def indexer_kl_terms(q, k, q_idx, k_idx, w, *, mask: Mask = Mask(causal=True), segment_ids=None,
                     kv_segment_ids=None, q_offset=0, indices=None, scale=None, chunk_size: int | None = None):
  """(sum of the per-query KL terms, number of queries that see a key): indexer_kl_loss before the mean.

  Shards of one sequence (context parallelism) add their terms and counts, then divide once.
  """
  b, t, n, h = q.shape
  s_len, kvh = k.shape[1], k.shape[2]
  hi = q_idx.shape[2]
  if k.shape[0] != b or k.shape[3] != h or n % kvh:
    raise ValueError(f"k must have shape [B={b}, S, K | {n}, H={h}], got {k.shape}")
  if q_idx.shape[:2] != (b, t) or k_idx.shape[:2] != (b, s_len) or w.shape != (b, t, hi):
    raise ValueError(f"indexer shapes must be q_idx [B, T, Hi, Di], k_idx [B, S, Di], w [B, T, Hi] with "
                     f"B={b}, T={t}, S={s_len}; got {q_idx.shape}, {k_idx.shape}, {w.shape}")
  if indices is not None and (getattr(indices, "shape", (None,))[:2] != (b, t) or indices.dtype != jnp.int32):
    raise ValueError(f"indices must be int32 [B={b}, T={t}, k], got {getattr(indices, 'shape', indices)}")
  seg, kv_seg = check_segments(segment_ids, kv_segment_ids, b, t, s_len)
  off = jnp.reshape(jnp.asarray(check_q_offset(q_offset, b), jnp.int32), (-1, 1))  # [B|1, 1]
  scale = default_scale(h, scale)
  if indices is None:  # per query: [N, S] main logits, [Hi, S] indexer products, a few [S] rows
    per_query = b * s_len * (n + hi + 4)
  else:  # per query: gathered K and k_idx rows, [N, k] and [Hi, k] logits
    per_query = b * indices.shape[-1] * (kvh * h + q_idx.shape[-1] + n + hi + 4)
  c = chunk_size or chunk_len(t, per_query)
  nc = -(-t // c)

  @jax.checkpoint  # recompute each chunk in the backward pass: residuals stay O(T), not O(T * S)
  def one_chunk(args):
    i, qc, qic, wc, segc, ic = args
    rows = i * c + jnp.arange(c, dtype=jnp.int32)[None]  # [1, C] rows of this call (the last chunk: padded)
    pos = off + rows  # [B|1, C] query positions
    qc = qc.reshape(b, c, kvh, n // kvh, h)  # [B, C, K, G, H]
    if ic is None:  # dense warm-up: every visible key
      visible = visibility(mask, pos, s_len, segc, kv_seg) & (rows < t)[:, :, None]  # [B|1, C, S]
      s_main = jnp.einsum("bckgh,bskh->bckgs", qc, k, preferred_element_type=jnp.float32) * scale
      score = indexer_scores(qic, k_idx, wc, score_dtype=jnp.float32)  # [B, C, S]
    else:  # sparse phase: the selected keys only
      safe = jnp.maximum(ic, 0)
      k_seg = None if kv_seg is None else jnp.take_along_axis(kv_seg[:, None, :], safe, axis=2)
      visible = (ic >= 0) & (rows < t)[:, :, None] & element_mask(
          mask, pos[:, :, None], safe, s_len, None if segc is None else segc[:, :, None], k_seg)  # [B, C, k]
      kc = gather_rows(k, safe)  # [B, C, k, K, H]
      s_main = jnp.einsum("bckgh,bcjkh->bckgj", qc, kc, preferred_element_type=jnp.float32) * scale
      kic = gather_rows(k_idx, safe).astype(jnp.float32)  # [B, C, k, Di]
      logits = jnp.einsum("bchd,bcjd->bchj", qic.astype(jnp.float32), kic)  # [B, C, Hi, k]
      score = jnp.einsum("bchj,bch->bcj", jnp.maximum(logits, 0.0), wc.astype(jnp.float32))
    visible = jnp.broadcast_to(visible, score.shape)
    return _kl(_target(lax.stop_gradient(s_main), visible), score, visible)

  xs = (jnp.arange(nc, dtype=jnp.int32), chunk_rows(q, c, nc), chunk_rows(q_idx, c, nc), chunk_rows(w, c, nc),
        chunk_rows(seg, c, nc), chunk_rows(indices, c, nc))
  total, count = lax.map(one_chunk, xs)
  return jnp.sum(total), jnp.sum(count)
