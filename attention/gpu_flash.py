"""What the two GPU FlashAttention kernels share: the Configs type, the static facts of a call (Problem), and
the flash_vjp forward and backward that pad the operands to whole tiles, launch and slice the padding off.

pallas_gpu (Triton) and pallas_mgpu (Mosaic GPU) differ in their kernels, tile tables and launches; a kernel
module supplies those as a Problem builder and two launch functions, and make_gpu_flash turns them into its
attention.flash_vjp.Flash.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax.numpy as jnp

from attention.flash_vjp import Flash, make_flash
from attention.kernel_utils import pad_axis, round_up, split_offset
from attention.mask import Mask

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class Configs:
  """One tile configuration per kernel of a GPU FlashAttention kernel: forward, dK/dV and dQ (each the
  kernel module's own KernelConfig)."""

  fwd: Any
  dkv: Any
  dq: Any


@dataclasses.dataclass(frozen=True)
class Problem:
  """Static facts of one call of a GPU kernel: lengths T, S and their padded sizes, group size, padded head
  dims, the tile configurations, mask, scale, whether segment ids are given, interpret mode."""

  t: int
  s: int
  tp: int
  sp: int
  groups: int
  hp: int
  hvp: int
  configs: Configs
  mask: Mask
  scale: float
  has_seg: bool
  interpret: bool

  @property
  def scale2(self) -> float:
    """The scale of base-2 logits: the kernels' softmax uses exp2, with log2(e) folded into the scale."""
    return self.scale * LOG2E


def gpu_problem(q, k, v, *, mask, segment_ids, scale, interpret, configs: Configs, q_multiple: int,
                kv_multiple: int, padded_head_dim: Callable[[int], int]) -> Problem:
  """The Problem of q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv]: T and S padded to multiples of
  q_multiple and kv_multiple (whole tiles of every kernel), head dims by padded_head_dim."""
  if not isinstance(mask, Mask):
    raise ValueError(f"mask must be an attention.Mask, got {mask!r}")
  t, s = q.shape[1], k.shape[1]
  return Problem(t, s, round_up(t, q_multiple), round_up(s, kv_multiple), q.shape[2] // k.shape[2],
                 padded_head_dim(q.shape[3]), padded_head_dim(v.shape[3]), configs, mask, float(scale),
                 segment_ids is not None, bool(interpret))


def _pad_qkv(pb: Problem, q, k, v):
  """q [B, Tp, N, Hp], k [B, Sp, K, Hp], v [B, Sp, K, Hvp], zero-padded."""
  q = pad_axis(pad_axis(q, 1, pb.tp), 3, pb.hp)  # zero head-dim padding leaves q.k unchanged
  k = pad_axis(pad_axis(k, 1, pb.sp), 3, pb.hp)
  v = pad_axis(pad_axis(v, 1, pb.sp), 3, pb.hvp)  # zero v columns give zero output columns, sliced off
  return q, k, v


def _pad_segments(pb: Problem, segment_ids, kv_segment_ids):
  """int32 [B, Tp], [B, Sp] zero-padded, or (None, None): the kv_len mask already hides padded keys and
  padded query rows are sliced off, so the ids of padding do not matter."""
  if segment_ids is None:
    return None, None
  return pad_axis(segment_ids, 1, pb.tp), pad_axis(kv_segment_ids, 1, pb.sp)


def _padded_forward(call: Callable, pb: Problem, q, k, v, *, segment_ids, kv_segment_ids, q_offset):
  """(out [B, T, N, Hv], lse [B, N, T]) of call(pb, q, k, v, static_offset, offsets, q_seg, kv_seg) -> padded
  (out [B, Tp, N, Hvp], lse [B, N, Tp]), on operands padded to pb's sizes."""
  static_off, off = split_offset(q_offset, q.shape[0])
  q_seg, kv_seg = _pad_segments(pb, segment_ids, kv_segment_ids)
  out, lse = call(pb, *_pad_qkv(pb, q, k, v), static_off, off, q_seg, kv_seg)
  return out[:, :pb.t, :, :v.shape[3]], lse[:, :, :pb.t]


def _padded_backward(call: Callable, pb: Problem, q, k, v, lse, do, delta, *, segment_ids, kv_segment_ids,
                     q_offset):
  """(dq, dk, dv) of call(pb, q, k, v, do, lse2, delta, static_offset, offsets, q_seg, kv_seg) on operands
  padded to pb's sizes, with lse2 = lse * log2(e) (the kernels' base-2 softmax) and delta [B, N, Tp]."""
  static_off, off = split_offset(q_offset, q.shape[0])
  q_seg, kv_seg = _pad_segments(pb, segment_ids, kv_segment_ids)
  lse2 = pad_axis(lse.astype(jnp.float32) * LOG2E, 2, pb.tp, jnp.inf)  # padded rows: p = exp2(-inf) = 0
  delta = pad_axis(delta.astype(jnp.float32), 2, pb.tp)
  do = pad_axis(pad_axis(do.astype(q.dtype), 1, pb.tp), 3, pb.hvp)
  dq, dk, dv = call(pb, *_pad_qkv(pb, q, k, v), do, lse2, delta, static_off, off, q_seg, kv_seg)
  return dq[:, :pb.t, :, :q.shape[3]], dk[:, :pb.s, :, :k.shape[3]], dv[:, :pb.s, :, :v.shape[3]]


def make_gpu_flash(problem: Callable, forward_call: Callable, backward_call: Callable, name: str) -> Flash:
  """The Flash of a GPU kernel module `name`.

  problem(q, k, v, *, mask, segment_ids, scale, block_sizes, interpret, configs) -> Problem checks a call
  and picks its tiles (configs: an explicit Configs instead of the default table, e.g. a benchmark sweep);
  forward_call(pb, q, k, v, static_offset, offsets, q_seg, kv_seg) -> (out [B, Tp, N, Hvp], lse [B, N, Tp])
  and backward_call(pb, q, k, v, do, lse2, delta, static_offset, offsets, q_seg, kv_seg) -> (dq, dk, dv)
  launch the kernels on padded operands. The Flash functions take the kernel options `interpret`
  (Pallas interpret mode, default False) and `configs`.
  """

  def forward(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, interpret=False,
              configs=None):
    pb = problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, block_sizes=block_sizes,
                 interpret=interpret, configs=configs)
    return _padded_forward(forward_call, pb, q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                           q_offset=q_offset)

  def backward(q, k, v, lse, do, delta, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes,
               interpret=False, configs=None):
    pb = problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, block_sizes=block_sizes,
                 interpret=interpret, configs=configs)
    return _padded_backward(backward_call, pb, q, k, v, lse, do, delta, segment_ids=segment_ids,
                            kv_segment_ids=kv_segment_ids, q_offset=q_offset)

  return make_flash(forward, backward, name=name)


__all__ = ["LOG2E", "Configs", "Problem", "gpu_problem", "make_gpu_flash"]
