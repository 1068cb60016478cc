"""Dense O(L^2) attention: the oracle every other implementation is tested against.

Builds the full [B, N, T, S] score array on purpose: simple enough to trust, never used for long inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.kernel_utils import default_scale
from attention.mask import Mask, default_kv_segment_ids, element_mask


def positions(q_len: int, q_offset) -> jax.Array:
  """[B or 1, T] int32 query positions: q_offset + i."""
  off = jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1))
  return off + jnp.arange(q_len, dtype=jnp.int32)[None, :]


def dense_mask(mask: Mask, q_len: int, kv_len: int, *, segment_ids=None, kv_segment_ids=None, q_offset=0):
  """[B or 1, T, S] bool visibility built with the shared element-wise rule (kv_segment_ids defaults to
  segment_ids)."""
  q_pos = positions(q_len, q_offset)[:, :, None]  # [B|1, T, 1]
  k_pos = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]  # [1, 1, S]
  q_seg = k_seg = None
  if segment_ids is not None:
    kv_segment_ids = default_kv_segment_ids(segment_ids, kv_segment_ids)
    q_seg, k_seg = segment_ids[:, :, None], kv_segment_ids[:, None, :]
  return element_mask(mask, q_pos, k_pos, kv_len, q_seg, k_seg)


def attention_with_lse(q, k, v, visible, scale):
  """Softmax attention under a boolean mask; float32 math.

  Args:
    q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv]; visible [B|1, T, S] or [B|1, K|1, G|1, T, S] bool.
  Returns:
    out [B, T, N, Hv] (float32) and lse [B, N, T] (+inf where a row sees no key).
  """
  b, t, n, h = q.shape
  kh = k.shape[2]
  qg = q.astype(jnp.float32).reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
  s = jnp.einsum("btkgh,bskh->bkgts", qg, k.astype(jnp.float32)) * scale  # [B, K, G, T, S]
  if visible.ndim == 3:
    visible = visible[:, None, None]
  s = jnp.where(visible, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)  # rows with no visible key: avoid inf - inf
  p = jnp.exp(s - m)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bkgts,bskh->btkgh", p, v.astype(jnp.float32)).reshape(b, t, n, v.shape[-1])
  lse = jnp.where(denom[..., 0] > 0, m[..., 0] + jnp.log(denom[..., 0]), jnp.inf)  # [B, K, G, T]
  return out, lse.reshape(b, n, t)


def attention(q, k, v, *, mask=Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0, scale=None):
  """Dense reference attention; same arguments and semantics as attention.attend(). Returns [B, T, N, Hv]."""
  scale = default_scale(q.shape[-1], scale)
  visible = dense_mask(mask, q.shape[1], k.shape[1], segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                       q_offset=q_offset)
  out, _ = attention_with_lse(q, k, v, visible, scale)
  return out.astype(q.dtype)
