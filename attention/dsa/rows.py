"""Row helpers shared by the DSA ops: query chunks and per-batch row gathers.

Every DSA op walks the queries in chunks of C rows (so nothing holds a [T, S] array) and reads the
selected keys of each query by gathering rows, as DeepSeek-V3.2-Exp's sparse attention does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.kernel_utils import pad_axis


def chunk_len(q_len: int, per_query: int) -> int:
  """Queries per chunk so one chunk's working set (per_query elements each) fits the backend's budget.

  16 Mi elements (64 MiB of float32) on an accelerator, where few large chunks keep the device busy; 4 Mi on
  the CPU. Memory stays O(C * S) per chunk either way.
  """
  budget = 1 << 22 if jax.default_backend() == "cpu" else 1 << 24
  return max(1, min(q_len, budget // max(1, per_query)))


def chunk_rows(x, c: int, nc: int):
  """[B, T, ...] -> [nc, B, C, ...], zero-padded to nc * C rows; None stays None."""
  if x is None:
    return None
  x = pad_axis(x, 1, nc * c)
  return jnp.moveaxis(x.reshape(x.shape[0], nc, c, *x.shape[2:]), 1, 0)


def unchunk_rows(x, t: int):
  """[nc, B, C, ...] -> [B, T, ...] (the padding rows dropped)."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


gather_rows = jax.vmap(lambda x, i: x[i])  # x [B, S, ...], i [B, C, k] -> [B, C, k, ...]
scatter_add_rows = jax.vmap(lambda acc, i, x: acc.at[i].add(x))  # acc [B, S, ...] += x [B, C, k, ...] at i
