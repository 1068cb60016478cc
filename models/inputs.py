"""Input checks and default positions shared by the encoder and the decoder.

Packed rows (several documents in one row, told apart by segment ids) restart positions at every
document, so a document's RoPE phases do not depend on what was packed before it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def document_positions(segment_ids):
  """[B, T] int32 positions that restart at 0 wherever the segment id changes."""
  t = segment_ids.shape[1]
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
  start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
                          axis=1)
  return idx - jax.lax.cummax(jnp.where(start, idx, 0), axis=1)


def prepare(tokens, positions, segment_ids, max_len: int):
  """Validate tokens [B, T] and fill in default positions; returns (positions [B, T], segment_ids)."""
  if getattr(tokens, "ndim", None) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be an int array [B, T], got {getattr(tokens, 'shape', tokens)}")
  b, t = tokens.shape
  if t > max_len:
    raise ValueError(f"sequence length {t} exceeds the model's max_len {max_len}")
  for name, x in (("positions", positions), ("segment_ids", segment_ids)):
    if x is not None and (getattr(x, "shape", None) != (b, t) or not jnp.issubdtype(x.dtype, jnp.integer)):
      raise ValueError(f"{name} must be an int array of shape {(b, t)}, got {getattr(x, 'shape', x)}")
  if positions is None:
    positions = (document_positions(segment_ids) if segment_ids is not None else
                 jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)))
  return positions.astype(jnp.int32), (None if segment_ids is None else segment_ids.astype(jnp.int32))
