"""The public attention API: attend() and the registry of implementations.

`what` a layer computes is the Mask (and, for DSA, the selected indices); `how` it is computed is the impl
string, looked up in one registry. "auto" picks the fastest correct impl for the default backend and logs
its choice once; nothing falls back silently.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention import reference, xla_flash
from attention.mask import BlockMap, BlockSizes, Mask, attention_flops, block_map, element_mask

_log = logging.getLogger(__name__)

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class Impl:
  """One way to compute attention.

  fn(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes) -> out.
  platforms: backends it runs on natively (None: any); `interpretable`: runs anywhere in interpret mode.
  """

  fn: Callable
  platforms: tuple[str, ...] | None = None
  interpretable: bool = False


def _reference(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
  del interpret, block_sizes
  return reference.attention(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                             q_offset=q_offset, scale=scale)


def _xla(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
  del interpret
  return xla_flash.flash_attention(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                                   q_offset=q_offset, scale=scale, block_sizes=block_sizes)


def _cudnn(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
  del interpret, block_sizes
  if segment_ids is not None or kv_segment_ids is not None:
    raise ValueError("impl='cudnn' does not support segment_ids; use impl='pallas' or 'xla'")
  if not (isinstance(q_offset, int) and q_offset == 0):
    raise ValueError(f"impl='cudnn' supports only q_offset=0, got {q_offset!r}; use impl='pallas' or 'xla'")
  if q.shape[-1] != v.shape[-1]:
    raise ValueError(f"impl='cudnn' needs equal q and v head dims, got {q.shape[-1]} and {v.shape[-1]}")
  return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=mask.causal,
                                      local_window_size=mask.window, implementation="cudnn")


def kernel_impl(flash_attention: Callable, platform: str) -> Impl:
  """The Impl of a Pallas kernel module: its flash_attention, native on `platform`, interpretable anywhere."""

  def fn(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
    return flash_attention(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                           q_offset=q_offset, scale=scale, block_sizes=block_sizes, interpret=interpret)

  return Impl(fn, platforms=(platform,), interpretable=True)


REGISTRY: dict[str, Impl] = {
    "reference": Impl(_reference),
    "xla": Impl(_xla),
    "cudnn": Impl(_cudnn, platforms=("gpu",)),
}
# impl="auto" per backend, first registered wins; the Pallas modules put themselves in front.
AUTO: dict[str, list[str]] = {"cpu": ["xla"], "gpu": ["xla"], "tpu": ["xla"]}
_AUTO_LOGGED: set[tuple[str, str, str]] = set()


def register(name: str, impl: Impl, *, auto_for: tuple[str, ...] = ()):
  """Add an implementation; `auto_for` lists backends where "auto" should prefer it."""
  REGISTRY[name] = impl
  for backend in auto_for:
    AUTO.setdefault(backend, []).insert(0, name)


def resolve_impl(impl: str, interpret: bool | None, *, registry: dict[str, Impl] | None = None,
                 op: str = "attend") -> tuple[str, bool]:
  """Turn (impl, interpret) into a registered name and a concrete interpret flag, or raise ValueError.

  Shared by every op with its own registry (attend, sparse_attend, topk_indices), so the impl names and
  the interpret rule are the same everywhere. "pallas" becomes "pallas_tpu" on TPU, else "pallas_gpu".
  """
  registry = REGISTRY if registry is None else registry
  backend = jax.default_backend()
  if not isinstance(impl, str):
    raise ValueError(f"impl must be a string, got {impl!r}")
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(f"interpret must be None or a bool, got {interpret!r}")
  if impl == "auto":
    choices = [c for c in AUTO.get(backend, ["xla"]) if c in registry]
    if not choices:
      raise ValueError(f"{op}: impl='auto' found no implementation for backend {backend!r}")
    impl = choices[0]
    if (op, backend, impl) not in _AUTO_LOGGED:
      _AUTO_LOGGED.add((op, backend, impl))
      _log.info("%s: impl='auto' chose %r on backend %r", op, impl, backend)
  if impl == "pallas":
    impl = "pallas_tpu" if backend == "tpu" else "pallas_gpu"  # on the CPU: the GPU kernel, interpreted
  if impl not in registry:
    raise ValueError(f"{op}: impl={impl!r} is not registered; choose one of "
                     f"{sorted(registry) + ['auto', 'pallas']}")
  entry = registry[impl]
  if interpret is None:
    interpret = entry.interpretable and backend == "cpu"
  # A Pallas kernel runs anywhere interpreted, and with interpret=False it is lowered for its own hardware
  # whatever the backend (cross-lowering from a CPU-only machine).
  if entry.platforms is not None and backend not in entry.platforms and not entry.interpretable:
    raise ValueError(f"{op}: impl={impl!r} runs on {entry.platforms}, but the default backend is {backend!r}")
  return impl, interpret


def _check_rank(name, x, rank=4):
  if getattr(x, "ndim", None) != rank:
    raise ValueError(f"{name} must have rank {rank} (BTNH), got shape {getattr(x, 'shape', None)}")


def _check_float(name, x):
  if x.dtype not in _FLOAT_DTYPES:
    raise ValueError(f"{name} must be float32, bfloat16 or float16, got dtype {x.dtype}")


def _check_q_offset(q_offset, b):
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


def _check_segments(segment_ids, kv_segment_ids, b, t, s):
  """Validate [B, T] / [B, S] int segment ids; kv_segment_ids defaults to segment_ids (needs T == S)."""
  if segment_ids is None:
    if kv_segment_ids is not None:
      raise ValueError("kv_segment_ids given without segment_ids")
    return None, None
  if getattr(segment_ids, "shape", None) != (b, t) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be an int array of shape {(b, t)}, got {_describe(segment_ids)}")
  if kv_segment_ids is None:
    if s != t:
      raise ValueError(f"kv_segment_ids is required when T={t} != S={s}")
    kv_segment_ids = segment_ids
  if getattr(kv_segment_ids, "shape", None) != (b, s) or not jnp.issubdtype(kv_segment_ids.dtype, jnp.integer):
    raise ValueError(f"kv_segment_ids must be an int array of shape {(b, s)}, got {_describe(kv_segment_ids)}")
  return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(kv_segment_ids, jnp.int32)


def validate_qkv(q, k, v):
  """Ranks, dtypes and head counts of q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv] (ValueError)."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    _check_rank(name, x)
    _check_float(name, x)
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
  _check_segments(segment_ids, kv_segment_ids, b, t, k.shape[1])
  _check_q_offset(q_offset, b)


def attend(q, k, v, *, mask: Mask = Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0, scale=None,
           impl: str = "auto", interpret: bool | None = None, block_sizes: BlockSizes | None = None):
  """Exact attention; q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv] -> [B, T, N, Hv].

  Args:
    mask: causal and/or sliding window (see attention.Mask).
    segment_ids: [B, T] int; a query sees a key only with an equal id (kv_segment_ids [B, S] defaults
      to segment_ids).
    q_offset: position of the first query (int or int32 [B]); causal and window compare positions.
    scale: logit scale, default 1/sqrt(H).
    impl: "reference" | "xla" | "pallas" | "pallas_gpu" | "pallas_tpu" | "cudnn" | "auto".
    interpret: Pallas interpret mode; None means "exactly when the default backend is the CPU".
    block_sizes: optional tile sizes overriding the impl's default table.
  Returns:
    [B, T, N, Hv] in q's dtype; a query that sees no key gets zeros.
  """
  validate(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_offset=q_offset)
  if scale is not None and not isinstance(scale, (int, float)):
    raise ValueError(f"scale must be a Python number or None, got {scale!r}")
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be an attention.BlockSizes, got {block_sizes!r}")
  name, interpret = resolve_impl(impl, interpret)
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  if isinstance(q_offset, np.integer):
    q_offset = int(q_offset)
  return REGISTRY[name].fn(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                           q_offset=q_offset, scale=scale, interpret=interpret, block_sizes=block_sizes)


__all__ = ["Mask", "BlockSizes", "BlockMap", "Impl", "REGISTRY", "attend", "attention_flops", "block_map",
           "element_mask", "kernel_impl", "register", "resolve_impl", "validate",
           "indexer_kl_loss", "sparse_attend", "topk_indices"]

from attention.dsa import indexer_kl_loss, sparse_attend, topk_indices  # noqa: E402,F401
from attention import pallas_gpu  # noqa: E402,F401  registers "pallas_gpu"
from attention import pallas_tpu  # noqa: E402,F401  registers "pallas_tpu"
