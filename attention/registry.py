"""The table of attention implementations that attend(), ring attention and the benchmarks all read.

One row per impl name. A FlashAttention kernel is a row built by `flash_impl` from the attention.flash_vjp
builder its module exports (FLASH); ring attention takes that row's forward/backward for its local steps.
Adding a kernel is one file and one row here. "auto" takes, per backend, the first row whose `auto_for`
lists that backend.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Generic, Protocol, TypeVar

import jax

from attention import pallas_gpu, pallas_mgpu, pallas_tpu, reference, xla_flash
from attention.flash_vjp import Flash

_log = logging.getLogger(__name__)


class AttendFn(Protocol):
  """The signature of a REGISTRY row's fn: attend's arguments, validated and normalised (scale a float)."""

  def __call__(self, q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
    ...


Fn = TypeVar("Fn")


@dataclasses.dataclass(frozen=True)
class Impl(Generic[Fn]):
  """One way to compute an op: a row of that op's table (attention's REGISTRY: Impl[AttendFn]; the DSA
  tables: Impl[SparseFn], Impl[TopkFn] of attention.dsa.api). The table fixes fn's signature.

  fn: the op's function, called with validated arguments.
  platforms: backends it runs on natively (None: any); interpretable: runs anywhere in interpret mode
    (and its kernels then take an `interpret` option).
  flash: the kernel's attention.flash_vjp.Flash (forward, backward, ...), for FlashAttention kernels.
  auto_for: backends where impl="auto" may pick it (the first such row of the table wins).
  """

  fn: Fn
  platforms: tuple[str, ...] | None = None
  interpretable: bool = False
  flash: Flash | None = None
  auto_for: tuple[str, ...] = ()

  def kernel_options(self, interpret: bool) -> dict:
    """The keyword options of this impl's flash functions: `interpret` for Pallas kernels, else none."""
    return {"interpret": interpret} if self.interpretable else {}


def flash_impl(flash: Flash, *, platform: str | None = None, auto_for: tuple[str, ...] = ()) -> Impl[AttendFn]:
  """The row of a FlashAttention kernel: native on `platform` and interpretable anywhere (Pallas), or any
  backend (platform=None, plain JAX)."""

  def fn(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
    return flash.attention(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                           q_offset=q_offset, scale=scale, block_sizes=block_sizes, **row.kernel_options(interpret))

  row = Impl(fn, platforms=None if platform is None else (platform,), interpretable=platform is not None,
             flash=flash, auto_for=auto_for)
  return row


def _reference(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, interpret, block_sizes):
  del interpret, block_sizes
  return reference.attention(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                             q_offset=q_offset, scale=scale)


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


REGISTRY: dict[str, Impl[AttendFn]] = {
    "pallas_gpu": flash_impl(pallas_gpu.FLASH, platform="gpu", auto_for=("gpu",)),
    "pallas_tpu": flash_impl(pallas_tpu.FLASH, platform="tpu", auto_for=("tpu",)),
    # Hopper only and not in "auto" until a compiled GPU check has passed and timed it faster than pallas_gpu.
    "pallas_mgpu": flash_impl(pallas_mgpu.FLASH, platform="gpu"),
    "xla": flash_impl(xla_flash.FLASH, auto_for=("cpu", "gpu", "tpu")),
    "cudnn": Impl(_cudnn, platforms=("gpu",)),
    "reference": Impl(_reference),
}
_AUTO_LOGGED: set[tuple[str, str, str]] = set()


def flash_registry() -> dict[str, Impl]:
  """The rows that are FlashAttention kernels (forward/backward with the lse): what ring attention runs."""
  return {name: impl for name, impl in REGISTRY.items() if impl.flash is not None}


def resolve_impl(impl: str, interpret: bool | None, *, registry: dict[str, Impl] | None = None,
                 op: str = "attend") -> tuple[str, bool]:
  """Turn (impl, interpret) into a registered name and a concrete interpret flag, or raise ValueError.

  Shared by every op with its own registry (attend, ring attention, sparse_attend, topk_indices), so the
  impl names and the interpret rule are the same everywhere. "pallas" becomes "pallas_tpu" on TPU, else
  "pallas_gpu".
  """
  registry = REGISTRY if registry is None else registry
  backend = jax.default_backend()
  if not isinstance(impl, str):
    raise ValueError(f"impl must be a string, got {impl!r}")
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(f"interpret must be None or a bool, got {interpret!r}")
  if impl == "auto":
    choices = [name for name, entry in registry.items() if backend in entry.auto_for]
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


__all__ = ["AttendFn", "Impl", "REGISTRY", "flash_impl", "flash_registry", "resolve_impl"]
