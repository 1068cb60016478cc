"""One custom_vjp for every FlashAttention kernel: residuals, delta, the lse output and its cotangent.

A kernel module writes two functions over BTNH arrays and gets its whole public API from one call:

  forward(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, **options)
      -> out [B, T, N, Hv] in q's dtype, lse [B, N, T] float32 (natural log; +inf for a row that sees
         no key, so that exp(s - lse) = 0 there in the backward pass)
  backward(q, k, v, lse, do, delta, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes,
           **options)
      -> dq, dk, dv in the dtypes of q, k, v; do [B, T, N, Hv] is the cotangent of out and
         delta [B, N, T] float32 = rowsum(dO * O) - dlse (dlse: the cotangent of lse), so that
         ds = p * (dp - delta) is the gradient through both outputs (d lse / d s = p).

  FLASH = make_flash(forward, backward)
  FLASH.attention(q, k, v, **kw)          -> out, differentiable in q, k, v
  FLASH.attention_with_lse(q, k, v, **kw) -> (out, lse), differentiable through both outputs
  FLASH.forward(q, k, v, **kw)            -> (out, lse), no gradient (ring attention merges these)
  FLASH.backward(q, k, v, out, lse, do, *, dlse=None, **kw) -> (dq, dk, dv); out and lse may be the
      global results of a larger attention this call is one part of (ring attention): the gradients
      are then that part's share.

kw: mask=Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0, scale=None, block_sizes=None and the
kernel's own options (e.g. interpret), which must be hashable. The kernel functions receive them
normalised here, once for every kernel: scale a float (default 1/sqrt(H)); segment ids int32 [B, T] and
[B, S], or both None (kv_segment_ids defaults to segment_ids); q_offset a Python int (static, so block
maps are NumPy) or an int32 array ([B] or a scalar; may be negative: ring attention shifts positions);
block_sizes a BlockSizes or None (the kernel's default). Inputs are not validated here; attention.attend
does that. A new kernel is then one row of attention.registry.REGISTRY: flash_impl(FLASH, platform=...).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention.kernel_utils import default_scale
from attention.mask import BlockSizes, Mask, default_kv_segment_ids


def delta_rows(out, do, dlse=None):
  """delta [B, N, T] float32 = rowsum(dO * O) - dlse, from out and do [B, T, N, Hv] and dlse [B, N, T]."""
  delta = jnp.einsum("btnh,btnh->bnt", do.astype(jnp.float32), out.astype(jnp.float32))
  return delta if dlse is None else delta - dlse.astype(jnp.float32)


def _prepare(q, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, options):
  """(static, traced q_offset or None, q_seg, kv_seg): the normalised arguments, split for custom_vjp.

  static = (mask, scale, block_sizes, static q_offset or None, sorted option items) is hashable.
  """
  seg = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  scale = default_scale(q.shape[-1], scale)
  if isinstance(q_offset, (int, np.integer)) and not isinstance(q_offset, bool):
    static_offset, traced_offset = int(q_offset), None
  else:
    static_offset, traced_offset = None, jnp.asarray(q_offset, jnp.int32)
  static = (mask, scale, block_sizes, static_offset, tuple(sorted(options.items())))
  return static, traced_offset, seg(segment_ids), seg(default_kv_segment_ids(segment_ids, kv_segment_ids))


def _kernel_kwargs(static, q_offset, q_seg, kv_seg):
  mask, scale, block_sizes, static_offset, options = static
  return dict(mask=mask, segment_ids=q_seg, kv_segment_ids=kv_seg, scale=scale, block_sizes=block_sizes,
              q_offset=static_offset if q_offset is None else q_offset, **dict(options))


@dataclasses.dataclass(frozen=True)
class Flash:
  """The public functions of one FlashAttention kernel (see the module docstring); built by make_flash."""

  forward: Callable
  backward: Callable
  attention_with_lse: Callable
  attention: Callable


def make_flash(forward: Callable, backward: Callable, name: str | None = None) -> Flash:
  """Wrap a kernel's forward and backward (module docstring contract) in one custom_vjp.

  name: the kernel module the docstrings name (default: forward's module).
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def flash(static, q, k, v, q_offset, q_seg, kv_seg):
    return forward(q, k, v, **_kernel_kwargs(static, q_offset, q_seg, kv_seg))

  def flash_fwd(static, q, k, v, q_offset, q_seg, kv_seg):
    out, lse = forward(q, k, v, **_kernel_kwargs(static, q_offset, q_seg, kv_seg))
    return (out, lse), (q, k, v, q_offset, q_seg, kv_seg, out, lse)

  def flash_bwd(static, res, cotangents):
    q, k, v, q_offset, q_seg, kv_seg, out, lse = res
    do, dlse = cotangents  # [B, T, N, Hv], [B, N, T]
    kw = _kernel_kwargs(static, q_offset, q_seg, kv_seg)
    dq, dk, dv = backward(q, k, v, lse, do, delta_rows(out, do, dlse), **kw)
    return dq, dk, dv, None, None, None  # offsets and segment ids are integers: no cotangent

  flash.defvjp(flash_fwd, flash_bwd)

  def attention_with_lse(q, k, v, *, mask: Mask = Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0,
                         scale=None, block_sizes: BlockSizes | None = None, **options):
    static, q_offset, q_seg, kv_seg = _prepare(q, mask, segment_ids, kv_segment_ids, q_offset, scale,
                                               block_sizes, options)
    return flash(static, q, k, v, q_offset, q_seg, kv_seg)

  def attention(q, k, v, **kw):
    return attention_with_lse(q, k, v, **kw)[0]

  def public_forward(q, k, v, *, mask: Mask = Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0,
                     scale=None, block_sizes: BlockSizes | None = None, **options):
    prepared = _prepare(q, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, options)
    return forward(q, k, v, **_kernel_kwargs(*prepared))

  def public_backward(q, k, v, out, lse, do, *, dlse=None, mask: Mask = Mask(), segment_ids=None,
                      kv_segment_ids=None, q_offset=0, scale=None, block_sizes: BlockSizes | None = None,
                      **options):
    prepared = _prepare(q, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, options)
    return backward(q, k, v, lse, do, delta_rows(out, do, dlse), **_kernel_kwargs(*prepared))

  for fn, doc in ((attention_with_lse, "-> (out [B, T, N, Hv], lse [B, N, T] float32), differentiable."),
                  (attention, "-> out [B, T, N, Hv], differentiable in q, k, v."),
                  (public_forward, "-> (out, lse), forward only."),
                  (public_backward, "-> (dq, dk, dv) from the saved out and lse and the cotangents.")):
    fn.__doc__ = f"FlashAttention of {name or forward.__module__} {doc} See attention.flash_vjp."
  return Flash(public_forward, public_backward, attention_with_lse, attention)


__all__ = ["Flash", "make_flash", "delta_rows"]
