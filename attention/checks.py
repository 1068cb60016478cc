"""Input checks shared by attend, ring attention and the DSA ops: ValueError naming the argument and value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention.mask import Mask, default_kv_segment_ids

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_rank(name, x, rank=4):
  """x must be an array of rank `rank`."""
  if getattr(x, "ndim", None) != rank:
    raise ValueError(f"{name} must have rank {rank} (BTNH), got shape {getattr(x, 'shape', None)}")


def check_float(name, x):
  """x must be float32, bfloat16 or float16."""
  if x.dtype not in _FLOAT_DTYPES:
    raise ValueError(f"{name} must be float32, bfloat16 or float16, got dtype {x.dtype}")


def check_q_offset(q_offset, b):
  """q_offset must be an int >= 0 or an int array of shape [] or [B]; NumPy ints come back as Python ints."""
  if isinstance(q_offset, (bool, float)) or not (
      isinstance(q_offset, (int, np.integer)) or
      (hasattr(q_offset, "dtype") and jnp.issubdtype(q_offset.dtype, jnp.integer) and
       np.ndim(q_offset) <= 1 and np.size(q_offset) in (1, b))):
    raise ValueError(f"q_offset must be an int or an int array of shape [{b}], got {q_offset!r}")
  if isinstance(q_offset, (int, np.integer)) and q_offset < 0:
    raise ValueError(f"q_offset must be >= 0, got {q_offset}")
  return int(q_offset) if isinstance(q_offset, np.integer) else q_offset


def _describe(x) -> str:
  """"shape (2, 8) dtype float32" for an array, its repr for anything else."""
  return f"shape {x.shape} dtype {x.dtype}" if hasattr(x, "shape") and hasattr(x, "dtype") else repr(x)


def check_segments(segment_ids, kv_segment_ids, b, t, s):
  """Validate [B, T] / [B, S] int segment ids; kv_segment_ids defaults to segment_ids (needs T == S)."""
  if segment_ids is None:
    if kv_segment_ids is not None:
      raise ValueError("kv_segment_ids given without segment_ids")
    return None, None
  if getattr(segment_ids, "shape", None) != (b, t) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be an int array of shape {(b, t)}, got {_describe(segment_ids)}")
  if kv_segment_ids is None and s != t:
    raise ValueError(f"kv_segment_ids is required when T={t} != S={s}")
  kv_segment_ids = default_kv_segment_ids(segment_ids, kv_segment_ids)
  if getattr(kv_segment_ids, "shape", None) != (b, s) or not jnp.issubdtype(kv_segment_ids.dtype, jnp.integer):
    raise ValueError(f"kv_segment_ids must be an int array of shape {(b, s)}, got {_describe(kv_segment_ids)}")
  return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(kv_segment_ids, jnp.int32)


def validate_qkv(q, k, v):
  """Ranks, dtypes and head counts of q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv] (ValueError)."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    check_rank(name, x)
    check_float(name, x)
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
  b, t, n, h = q.shape
  if k.shape[0] != b or v.shape[0] != b:
    raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}")
  if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
    raise ValueError(f"k and v must agree on [B, S, K]: k {k.shape}, v {v.shape}")
  if k.shape[3] != h:
    raise ValueError(f"k head dim {k.shape[3]} must equal q head dim {h} (q {q.shape}, k {k.shape})")
  if k.shape[2] < 1 or n % k.shape[2]:
    raise ValueError(f"q heads N={n} must be a multiple of kv heads K={k.shape[2]}")
  if b < 1:
    raise ValueError(f"q: the batch size B must be >= 1, got q {q.shape}")
  if t < 1 or k.shape[1] < 1:
    raise ValueError(f"sequence lengths must be >= 1, got q {q.shape}, k {k.shape}")


def validate(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset):
  """Raise ValueError naming the argument for anything attend() cannot honour."""
  validate_qkv(q, k, v)
  b, t = q.shape[:2]
  if not isinstance(mask, Mask):
    raise ValueError(f"mask must be an attention.Mask, got {mask!r}")
  check_segments(segment_ids, kv_segment_ids, b, t, k.shape[1])
  check_q_offset(q_offset, b)


def check_scale(scale):
  """scale must be a Python number or None (a traced scale would change the kernels' static arguments)."""
  if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
    raise ValueError(f"scale must be a Python number or None, got {scale!r}")


def check_indices(indices, b: int, t: int, s: int):
  """sparse_attend's rule for indices, the same for every impl: int32 [B, T, k >= 1], each in [-1, S).

  Concrete (not traced) indices are checked here, with a ValueError naming the first bad value, at the cost
  of a min and a max. Traced ones cannot be inspected: every entry outside [0, S) is treated as -1 (an
  empty slot), here, before any impl sees them. Returns the indices with that treatment applied.
  """
  check_rank("indices", indices, 3)
  if indices.dtype != jnp.int32:
    raise ValueError(f"indices must be int32, got dtype {indices.dtype}")
  if indices.shape[:2] != (b, t) or indices.shape[2] < 1:
    raise ValueError(f"indices must have shape [B={b}, T={t}, top_k>=1], got {indices.shape}")
  if not isinstance(indices, jax.core.Tracer):
    lo, hi = int(jnp.min(indices)), int(jnp.max(indices))
    if lo < -1 or hi >= s:
      raise ValueError(f"indices must lie in [-1, S={s}) (-1: an empty slot), got {lo if lo < -1 else hi}")
  return jnp.where((indices >= 0) & (indices < s), indices, -1)
