"""The tile ranges pallas_mgpu's kernels walk: attention.mask.block_map's, narrowed per batch row by the
tiles' segment-id ranges (a kernel reads its CTA's row from an int32 [B, 4, n] operand)."""

from __future__ import annotations

import jax.numpy as jnp

from attention.gpu_flash import Problem
from attention.kernel_utils import pad_axis
from attention.mask import BlockSizes, block_map, ranges_overlap, segment_tile_ranges


def tile_ranges(pb: Problem, batch: int, bq: int, bk: int, static_off, q_seg, kv_seg, *, by_kv: bool):
  """int32 [B, 4, n]: (start, full_start, full_end, end) per q tile (per kv tile when by_kv).

  The block map's range, narrowed per batch row to the first and last tile whose segment-id range
  overlaps this tile's (tiles outside cannot hold a visible pair; inside they are masked element-wise).
  """
  bm = block_map(pb.mask, pb.t, pb.s, BlockSizes(bq, bk), has_segments=pb.has_seg, q_offset=static_off)
  rows = (pb.sp // bk) if by_kv else (pb.tp // bq)
  r = pad_axis(jnp.asarray(bm.ranges(kv_major=by_kv)), 1, rows)  # [4, rows]; padded tiles visit nothing
  r = jnp.broadcast_to(r[None], (batch, 4, rows))
  if q_seg is None:
    return r
  (q_lo, q_hi), (k_lo, k_hi) = segment_tile_ranges(q_seg, bq), segment_tile_ranges(kv_seg, bk)
  if by_kv:  # rows are kv tiles, columns q tiles
    hit = ranges_overlap(q_lo[:, None, :], q_hi[:, None, :], k_lo[:, :, None], k_hi[:, :, None])
  else:
    hit = ranges_overlap(q_lo[:, :, None], q_hi[:, :, None], k_lo[:, None, :], k_hi[:, None, :])  # [B, rows, cols]
  col = jnp.arange(hit.shape[2], dtype=jnp.int32)
  hit &= (col >= r[:, 0, :, None]) & (col < r[:, 3, :, None])
  any_hit = hit.any(-1)
  start = jnp.where(any_hit, jnp.where(hit, col, hit.shape[2]).min(-1), 0)
  end = jnp.where(any_hit, jnp.where(hit, col + 1, 0).max(-1), 0)
  return jnp.stack([start, start, start, end], axis=1).astype(jnp.int32)  # with segments nothing is full


__all__ = ["tile_ranges"]
