"""The lightning indexer of DeepSeek Sparse Attention (DeepSeek-AI 2025, "DeepSeek-V3.2-Exp: Boosting
Long-Context Efficiency with DeepSeek Sparse Attention", sec. 2.1).

score[t, s] = sum_j w[t, j] * relu(q_idx[t, j] . k_idx[s])

Hi indexer heads (DeepSeek: 64) of dim Di (128) score every key with one k_idx per token shared by all heads,
and w comes from a projection of the query token. The indexer is O(L^2) like dense attention, but with few
small heads, ReLU instead of softmax, and low-precision products (FP8 in DeepSeek's kernels), so it costs a
small fraction of the attention it replaces.

Scoring precisions: float32 (exact, for tests and losses), bfloat16 (the default for selection), and
float8_e4m3fn with one scale per row (per query head and per key), as DeepSeek's FP8 indexer does: the q
scale is positive, so it commutes with the ReLU and is folded into the head weight w.
"""

from __future__ import annotations

import jax.numpy as jnp

from attention.rope import apply_rope

SCORE_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float8_e4m3fn)
_FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_rows(x, dtype=jnp.float8_e4m3fn):
  """Symmetric per-row quantisation over the last axis: x ~= x_q * scale[..., None]; scale float32 > 0."""
  amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1)
  scale = jnp.where(amax > 0, amax / _FP8_MAX, 1.0)
  return (x.astype(jnp.float32) / scale[..., None]).astype(dtype), scale


def indexer_scores(q_idx, k_idx, w, *, score_dtype=jnp.bfloat16):
  """Lightning-indexer scores of every query against every key given; float32 [B, T, S].

  Callers pass a query chunk (topk_indices, indexer_kl_loss), so [B, T, S] here is [B, chunk, S].

  Args:
    q_idx: [B, T, Hi, Di] indexer queries.
    k_idx: [B, S, Di] indexer keys (one per token, shared by the Hi heads).
    w: [B, T, Hi] per-head weights of each query.
    score_dtype: dtype of the q.k products: float32, bfloat16 or float8_e4m3fn (per-row scales).
  Returns:
    float32 [B, T, S]; accumulation is always float32.
  """
  dt = jnp.dtype(score_dtype)
  w = w.astype(jnp.float32)
  if dt == jnp.float8_e4m3fn:
    q_idx, q_scale = quantize_rows(q_idx, dt)  # [B, T, Hi, Di], [B, T, Hi]
    k_idx, k_scale = quantize_rows(k_idx, dt)  # [B, S, Di], [B, S]
    w = w * q_scale
  else:
    q_idx, k_idx = q_idx.astype(dt), k_idx.astype(dt)
  logits = jnp.einsum("btjd,bsd->btjs", q_idx, k_idx, preferred_element_type=jnp.float32)  # [B, T, Hi, S]
  score = jnp.einsum("btjs,btj->bts", jnp.maximum(logits, 0.0), w)  # [B, T, S]
  if dt == jnp.float8_e4m3fn:
    score = score * k_scale[:, None, :]
  return score


def indexer_rope(q_idx, k_idx, q_positions, k_positions, inv_freq, *, rotary_dim: int):
  """Partial RoPE on the indexer's q and k: only the first rotary_dim of the Di dims rotate (V3.2 indexer).

  No attention scale: YaRN's temperature is one factor on every logit of a softmax. Applied inside a partial
  RoPE it would multiply only the rotated dims, re-weighting position against content as the factor grows
  (measured: an indexer fine-tuned at YaRN factor 8, read at factor 64 with factor 64's temperature on its
  rotary half, kept the MQAR value in its top-32 at 8192 for 27% of queries; with factor 8's, 96%;
  docs/extension.md). A uniform factor would leave the top-k unchanged, so the indexer takes none.

  Args:
    q_idx: [B, T, Hi, Di]; k_idx: [B, S, Di].
    q_positions: [B, T] or [T]; k_positions: [B, S] or [S].
    inv_freq: [rotary_dim / 2] from attention.rope.rope_frequencies(rotary_dim, ...).
    rotary_dim: even, <= Di.
  Returns:
    (q_idx, k_idx) rotated, same shapes and dtypes.
  """
  q_rot = apply_rope(q_idx, q_positions, inv_freq, rotary_dim=rotary_dim)
  k_rot = apply_rope(k_idx[:, :, None, :], k_positions, inv_freq, rotary_dim=rotary_dim)[:, :, 0, :]
  return q_rot, k_rot
