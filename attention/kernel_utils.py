"""What every attention op and kernel shares besides the mask rules: the default scale, padding, offsets.

attention.mask holds the element rule and the tile protocol; attention.flash_vjp the custom_vjp;
attention.gpu_flash what the two GPU FlashAttention kernels share. This module holds the array plumbing
every kernel file would otherwise write again.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def default_scale(head_dim: int, scale=None) -> float:
  """The logit scale: `scale` as a float, or 1/sqrt(head_dim) when it is None (every op's default)."""
  return head_dim ** -0.5 if scale is None else float(scale)


def pad_axis(x, axis: int, size: int, value=0, *, mode: str = "constant"):
  """x with `axis` padded at the end to `size`: with `value`, or repeating the last entry (mode="edge")."""
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  if mode == "edge":
    return jnp.pad(x, pad, mode="edge")
  return jnp.pad(x, pad, constant_values=value)


def round_up(x: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= x."""
  return -(-x // multiple) * multiple


def split_offset(q_offset, batch: int):
  """(static, per_row): a Python int q_offset stays static (NumPy block maps) beside its int32 [B] broadcast;
  a traced one is both times the int32 [B] array."""
  if isinstance(q_offset, (int, np.integer)) and not isinstance(q_offset, bool):
    return int(q_offset), jnp.full((batch,), int(q_offset), jnp.int32)
  per_row = jnp.broadcast_to(jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1,)), (batch,))
  return per_row, per_row


__all__ = ["default_scale", "pad_axis", "round_up", "split_offset"]
