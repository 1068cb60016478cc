"""The two public DSA ops, topk_indices and sparse_attend, and their tables of implementations.

DeepSeek-AI 2025, "DeepSeek-V3.2-Exp: Boosting Long-Context Efficiency with DeepSeek Sparse Attention".
A lightning indexer scores every key cheaply (few heads, ReLU, low precision), topk_indices keeps the best
top_k (2048 in V3.2) per query, and sparse_attend runs exact softmax attention over those keys only:
O(L*k) instead of O(L^2) for the attention, with no L x L array in either step.

Each op has its own table of attention.Impl rows, resolved by attention.resolve_impl with the same impl
names and interpret rule as attend(). impl="auto" means "xla" for both ops: the Pallas sparse-attention and
top-k kernels are verified in interpret mode and by cross-lowering only, not yet timed on hardware, so auto
does not pick them.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from attention.checks import (check_float, check_indices, check_q_offset, check_rank, check_scale, check_segments,
                              validate_qkv)
from attention.dsa.indexer import SCORE_DTYPES
from attention.dsa.sparse_pallas_gpu import sparse_pallas_gpu
from attention.dsa.sparse_pallas_tpu import sparse_pallas_tpu
from attention.dsa.sparse_reference import sparse_reference
from attention.dsa.sparse_xla import sparse_xla
from attention.dsa.topk import topk_reference, topk_xla, with_local_keys
from attention.dsa.topk_pallas import topk_pallas_gpu, topk_pallas_tpu
from attention.kernel_utils import default_scale
from attention.mask import Mask
from attention.registry import Impl, resolve_impl

_ANY = ("cpu", "gpu", "tpu")

class SparseFn(Protocol):
  """The signature of a SPARSE_REGISTRY row's fn: -> [B, T, N, Hv]."""

  def __call__(self, q, k, v, indices, *, scale, interpret):
    ...


class TopkFn(Protocol):
  """The signature of a TOPK_REGISTRY row's fn: -> int32 [B, T, top_k]."""

  def __call__(self, q_idx, k_idx, w, *, top_k, mask, segment_ids, kv_segment_ids, q_offset, score_dtype,
               chunk_size, interpret):
    ...


SPARSE_REGISTRY: dict[str, Impl[SparseFn]] = {
    "reference": Impl(sparse_reference),
    "xla": Impl(sparse_xla, auto_for=_ANY),  # auto: "xla" only (see the module docstring)
    "pallas_gpu": Impl(sparse_pallas_gpu, platforms=("gpu",), interpretable=True),
    "pallas_tpu": Impl(sparse_pallas_tpu, platforms=("tpu",), interpretable=True),
}
TOPK_REGISTRY: dict[str, Impl[TopkFn]] = {
    "reference": Impl(topk_reference),
    "xla": Impl(topk_xla, auto_for=_ANY),
    "pallas_gpu": Impl(topk_pallas_gpu, platforms=("gpu",), interpretable=True),
    "pallas_tpu": Impl(topk_pallas_tpu, platforms=("tpu",), interpretable=True),
}


def topk_indices(q_idx, k_idx, w, *, top_k: int, mask: Mask = Mask(causal=True), segment_ids=None,
                 kv_segment_ids=None, q_offset=0, impl: str = "auto", interpret: bool | None = None,
                 score_dtype=jnp.bfloat16, chunk_size: int | None = None, local_keys: int = 0):
  """Lightning-indexer top-k: the keys each query will attend to.

  score[t, s] = sum_j w[t, j] * relu(q_idx[t, j] . k_idx[s]), over the keys the mask lets query t see.

  Args:
    q_idx: [B, T, Hi, Di] indexer queries; k_idx: [B, S, Di] indexer keys; w: [B, T, Hi] head weights.
    top_k: keys kept per query (>= 1; may exceed S, the extra slots hold -1).
    mask: causal and/or window, positions as in attend(): key j at j, query i at q_offset + i.
    segment_ids: [B, T] int; kv_segment_ids: [B, S] int (defaults to segment_ids).
    q_offset: position of the first query (int or int32 [B]); the cache length when decoding.
    impl: "reference" (dense scores, tests) | "xla" (query-chunked running top-k) | "pallas_gpu" |
      "pallas_tpu" (Pallas scoring and radix-select kernels, attention.dsa.topk_pallas) | "pallas" | "auto".
    interpret: Pallas interpret mode; None means "exactly when the default backend is the CPU".
    score_dtype: precision of the q.k products: jnp.bfloat16 (default), jnp.float32, or
      jnp.float8_e4m3fn (per-row scales; for backends with FP8 matmuls).
    chunk_size: queries per chunk (default: a fixed per-backend working set, see attention.dsa.rows).
    local_keys: W >= 0 (causal masks only). W > 0 always selects each query's W most recent visible keys
      (a sliding window, which a content-only indexer cannot prefer) and the indexer's top_k among the
      keys farther back.
  Returns:
    int32 [B, T, top_k], best first, ties towards the lower index, -1 past the number of visible keys.
    With local_keys W: [B, T, W + top_k], the window's keys first (nearest first, -1 where the mask hides
    one), then the top_k as above.
  """
  for name, x in (("q_idx", q_idx), ("k_idx", k_idx), ("w", w)):
    check_rank(name, x, {"q_idx": 4, "k_idx": 3, "w": 3}[name])
  b, t, hi, di = q_idx.shape
  if k_idx.shape[0] != b or k_idx.shape[2] != di:
    raise ValueError(f"k_idx must have shape [B={b}, S, Di={di}], got {k_idx.shape}")
  if w.shape != (b, t, hi):
    raise ValueError(f"w must have shape {(b, t, hi)}, got {w.shape}")
  for name, x in (("q_idx", q_idx), ("k_idx", k_idx), ("w", w)):
    check_float(name, x)
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
  if not isinstance(mask, Mask):
    raise ValueError(f"mask must be an attention.Mask, got {mask!r}")
  if isinstance(local_keys, bool) or not isinstance(local_keys, (int, np.integer)) or local_keys < 0:
    raise ValueError(f"local_keys must be an int >= 0, got {local_keys!r}")
  if local_keys and not mask.causal:
    raise ValueError(f"local_keys={local_keys} needs a causal mask (the most recent keys), got {mask!r}")
  if score_dtype not in SCORE_DTYPES:
    names = [jnp.dtype(d).name for d in SCORE_DTYPES]
    raise ValueError(f"score_dtype must be one of {names}, got {score_dtype!r}")
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
  if b < 1:
    raise ValueError(f"q_idx: the batch size B must be >= 1, got q_idx {q_idx.shape}")
  if t < 1 or k_idx.shape[1] < 1:
    raise ValueError(f"sequence lengths must be >= 1, got q_idx {q_idx.shape}, k_idx {k_idx.shape}")
  q_offset = check_q_offset(q_offset, b)
  segment_ids, kv_segment_ids = check_segments(segment_ids, kv_segment_ids, b, t, k_idx.shape[1])
  name, interpret = resolve_impl(impl, interpret, registry=TOPK_REGISTRY, op="topk_indices")
  # Indices are integers: no gradient flows through the selection, and stopping it here keeps autodiff
  # out of the Pallas selection kernels (a pallas_call has no JVP rule for its program ids).
  q_idx, k_idx, w = (jax.lax.stop_gradient(x) for x in (q_idx, k_idx, w))
  local_keys = int(local_keys)
  far = TOPK_REGISTRY[name].fn(q_idx, k_idx, w, top_k=int(top_k) + local_keys, mask=mask, segment_ids=segment_ids,
                               kv_segment_ids=kv_segment_ids, q_offset=q_offset, score_dtype=score_dtype,
                               chunk_size=chunk_size, interpret=interpret)
  if not local_keys:
    return far
  return with_local_keys(far, int(top_k), local_keys, mask=mask, kv_len=k_idx.shape[1], q_offset=q_offset,
                         segment_ids=segment_ids, kv_segment_ids=kv_segment_ids)


def sparse_attend(q, k, v, indices, *, scale=None, impl: str = "auto", interpret: bool | None = None):
  """Attention of each query over exactly the keys in indices[b, t], shared by all heads.

  Args:
    q: [B, T, N, H]; k: [B, S, K, H]; v: [B, S, K, Hv], N % K == 0 (GQA: a group's heads share the keys).
    indices: int32 [B, T, k] key positions in [0, S), -1 for an empty slot; distinct within a row (as
      topk_indices returns them). The rule is the same for every impl: concrete indices outside [-1, S)
      raise ValueError naming the value; under a trace (jit, vmap) they cannot be inspected, and every
      entry outside [0, S) counts as -1 (ignored).
    scale: logit scale, default 1/sqrt(H).
    impl: "reference" | "xla" | "pallas" | "pallas_gpu" | "pallas_tpu" | "auto", as in attend().
    interpret: Pallas interpret mode; None means "exactly when the default backend is the CPU".
  Returns:
    [B, T, N, Hv] in q's dtype; a query with no valid index gets zeros. Differentiable in q, k, v.
  """
  validate_qkv(q, k, v)
  b, t, _, h = q.shape
  indices = check_indices(indices, b, t, k.shape[1])
  check_scale(scale)
  name, interpret = resolve_impl(impl, interpret, registry=SPARSE_REGISTRY, op="sparse_attend")
  return SPARSE_REGISTRY[name].fn(q, k, v, indices, scale=default_scale(h, scale), interpret=interpret)


__all__ = ["SPARSE_REGISTRY", "TOPK_REGISTRY", "SparseFn", "TopkFn", "sparse_attend", "topk_indices"]
