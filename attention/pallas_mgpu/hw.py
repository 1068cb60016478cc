"""The hardware-only pieces of pallas_mgpu and their stand-ins under the Mosaic GPU interpreter.

Interpret mode (jax._src.pallas.mosaic_gpu.interpret) runs the kernels on the CPU with simulated
warpgroups, TMA copies and barriers. It lacks three hardware-only pieces, which Hw replaces by their
mathematical equivalents when interpreting: layout annotations (layout_cast, layout iotas: no CPU rule),
wgmma (its simulation rejects a transposed operand and an operand in registers) and run_state (not
simulated). Everything else (the producer, the barriers, the ring of slots, the block map) is what runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from attention.mask import element_mask


class Hw:
  """The hardware-only operations, or their equivalents under the Mosaic GPU interpreter (module doc)."""

  ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per row of a wgmma tile
  COL = plgpu.Layout.WGMMA.reduce(0)  # one value per column

  def __init__(self, interpret: bool):
    self.interpret = interpret

  def layout(self, x, layout):
    return x if self.interpret else plgpu.layout_cast(x, layout)

  def iota(self, shape, dim):
    if self.interpret:
      return lax.broadcasted_iota(jnp.int32, shape, dim)
    return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=plgpu.Layout.WGMMA)

  def zeros(self, shape):
    return self.layout(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)

  def _value(self, x, trans=False):
    x = x if isinstance(x, jax.Array) and not hasattr(x, "at") else x[...]
    return x.T if trans else x

  def _dot(self, a, b, trans_b):
    return lax.dot_general(self._value(a), self._value(b, trans_b), (((1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)

  def _wgmma(self, acc_ref, a, b, trans_b):
    plgpu.wgmma(acc_ref, a, plgpu.transpose_ref(b, (1, 0)) if trans_b else b)

  def mma(self, a, b, shape, *, trans_b=False, then=None, overlap=False):
    """(a @ b[^T] [shape] float32, then()) ; a: SMEM ref or registers, b: SMEM ref.

    With overlap, then() runs while the tensor cores compute the product (issued first, awaited last).
    """
    if self.interpret:
      prod = self._dot(a, b, trans_b)
      return prod, (then() if then is not None else None)

    def scope(acc_ref):
      self._wgmma(acc_ref, a, b, trans_b)
      if overlap and then is not None:
        r = then()
        return acc_ref[...], r
      prod = acc_ref[...]  # awaits the wgmma
      return prod, (then() if then is not None else None)

    return pl.run_scoped(scope, plgpu.ACC(shape, jnp.float32))

  def mma_acc(self, acc, a, b, *, trans_b=False):
    """acc + a @ b[^T], accumulated in place by the tensor cores."""
    if self.interpret:
      return acc + self._dot(a, b, trans_b)

    def body(acc_ref):
      self._wgmma(acc_ref, a, b, trans_b)

    return pl.run_state(body)(plgpu.ACC.init(acc))


def per_row(x, shape):
  """x [r] broadcast along the columns of a [r, c] tile."""
  return lax.broadcast_in_dim(x, shape, [0])


def per_col(x, shape):
  """x [c] broadcast along the rows of a [r, c] tile."""
  return lax.broadcast_in_dim(x, shape, [1])


def tile_mask(hw, mask, kv_len, q_first, k_first, shape, q_seg, k_seg, *, transposed=False):
  """element_mask of a [rows, cols] tile; rows are queries, or keys when transposed (dK/dV)."""
  qd, kd = (1, 0) if transposed else (0, 1)
  q_pos = hw.iota(shape, qd) + q_first
  k_pos = hw.iota(shape, kd) + k_first
  bcast = per_col if transposed else per_row
  seg_q = None if q_seg is None else (bcast(q_seg, shape))
  seg_k = None if k_seg is None else ((per_row if transposed else per_col)(k_seg, shape))
  return element_mask(mask, q_pos, k_pos, kv_len, seg_q, seg_k)


def smem(shape, dtype, *, swizzled=True):
  """A shared-memory buffer; 2-D 2-byte tiles are stored as wgmma reads them (8 x 64 tiles, 128 B swizzle)."""
  if swizzled:
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)))
  return plgpu.SMEM(shape, dtype)


def interpret_arg(interpret: bool):
  """plgpu.kernel's interpret argument: the Mosaic GPU interpreter's parameters, or False to compile."""
  if not interpret:
    return False
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # pylint: disable=g-import-not-at-top
  return InterpretGPUParams()


__all__ = ["Hw", "interpret_arg", "per_col", "per_row", "smem", "tile_mask"]
