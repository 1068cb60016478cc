"""Dense oracle for sparse attention: the selected keys as a [B, T, S] boolean mask over full attention.

O(T*S) on purpose (tests only). Gradients come from autodiff through attention.reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.reference import attention_with_lse


def selection_mask(indices, kv_len: int):
  """indices int [B, T, k] (-1 ignored) -> bool [B, T, S], True at the selected keys."""
  b, t, _ = indices.shape
  idx = jnp.where(indices < 0, kv_len, indices)  # -1 would wrap around; send it out of bounds and drop it
  rows = jnp.zeros((b, t, kv_len), bool)
  bi = jnp.arange(b)[:, None, None]
  ti = jnp.arange(t)[None, :, None]
  return rows.at[bi, ti, idx].set(True, mode="drop")


def sparse_reference(q, k, v, indices, *, scale, interpret):
  """q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv], indices [B, T, k] -> [B, T, N, Hv]."""
  del interpret
  visible = jax.lax.stop_gradient(selection_mask(indices, k.shape[1]))
  out, _ = attention_with_lse(q, k, v, visible, scale)
  return out.astype(q.dtype)
