"""Attention masks: the element-wise rule and the block-level map built from it.

Positions: key j sits at position j, query i at position q_offset + i. A query at position p sees key j
iff j is a real key (j < S) and

  causal:           j <= p
  window=(l, r):    p - l <= j <= p + r        (jax.nn.dot_product_attention's local_window_size)
  segment ids:      q_seg[i] == kv_seg[j]

For causal and window masks the keys a query sees form one interval [lo(p), hi(p)], and lo, hi never
decrease with p. Hence the kv blocks a q block touches are a contiguous range, and so are the fully
visible ones. Every blockwise implementation (XLA, Pallas GPU, Pallas TPU) loops over exactly the ranges
of `block_map`, so causal and sliding-window attention skip work instead of masking it.

The tile protocol, one form for every kernel: BlockMap.ranges() is an int32 [4, n] table in the walk order
(start, full_start, full_end, end) per q tile (kv_major=True: per kv tile); walk_tiles runs a masked head,
a fully visible middle and a masked tail over one row; with segment ids, per-tile id ranges
(segment_tile_ranges) that cannot overlap (ranges_overlap) make a masked tile skipped at run time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax


_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Mask:
  """What a query may see. `window=(left, right)`; ModernBERT's local_attention=128 is (64, 64)."""

  causal: bool = False
  window: tuple[int, int] | None = None

  def __post_init__(self):
    if not isinstance(self.causal, (bool, np.bool_)):
      raise ValueError(f"Mask.causal must be a bool, got {self.causal!r}")
    if self.window is not None:
      w = tuple(self.window)
      if len(w) != 2 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in w):
        raise ValueError(f"Mask.window must be a pair of ints (left, right), got {self.window!r}")
      if w[0] < 0 or w[1] < 0:
        raise ValueError(f"Mask.window sides must be >= 0, got {self.window!r}")
      if max(w) > _INT32_MAX:  # positions are int32 on every impl
        raise ValueError(f"Mask.window sides must be <= 2**31 - 1 (int32 positions), got {self.window!r}; "
                         "use window=None for no window")
      object.__setattr__(self, "window", (int(w[0]), int(w[1])))



@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of a blockwise implementation (rows of q, rows of k/v per tile)."""

  block_q: int
  block_k: int

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"BlockSizes.{name} must be a positive int, got {v!r}")


def default_kv_segment_ids(segment_ids, kv_segment_ids):
  """The kv segment ids to use: kv_segment_ids, defaulting to segment_ids (one packed sequence)."""
  return segment_ids if kv_segment_ids is None else kv_segment_ids


def element_mask(mask: Mask, q_pos, k_pos, num_keys: int, q_seg=None, k_seg=None):
  """Boolean visibility of keys to queries; the one element-wise rule every implementation uses.

  Args:
    mask: the Mask.
    q_pos: int array [..., Tq, 1] of query positions (q_offset already added).
    k_pos: int array [..., 1, Tk] of key positions.
    num_keys: S; keys at positions >= S are padding and never visible.
    q_seg, k_seg: optional int arrays broadcastable like q_pos / k_pos.
  Returns:
    bool array of the broadcast shape [..., Tq, Tk].
  """
  visible = k_pos < num_keys
  if mask.causal:
    visible = visible & (k_pos <= q_pos)
  if mask.window is not None:
    left, right = mask.window
    visible = visible & (k_pos >= q_pos - left) & (k_pos <= q_pos + right)
  if q_seg is not None:
    visible = visible & (q_seg == k_seg)
  return visible


@dataclasses.dataclass(frozen=True)
class BlockMap:
  """Which kv blocks each q block visits, and the transposed map for backward passes.

  All ranges are half-open, in block units. For q block i the kv blocks [kv_start[i], kv_end[i]) may
  hold visible entries; of those [full_start[i], full_end[i]) are fully visible (no element-wise mask).
  q_start/q_end/q_full_start/q_full_end are the same per kv block. Arrays are NumPy when q_offset is a
  Python int and jax arrays when it is traced.
  """

  block_q: int
  block_k: int
  num_q_blocks: int
  num_kv_blocks: int
  kv_start: Any
  kv_end: Any
  full_start: Any
  full_end: Any
  q_start: Any
  q_end: Any
  q_full_start: Any
  q_full_end: Any

  def dense(self):
    """[num_q_blocks, num_kv_blocks] int32: 0 skipped, 1 partly visible (masked), 2 fully visible."""
    xp = np if isinstance(self.kv_start, np.ndarray) else jnp
    j = xp.arange(self.num_kv_blocks)[None, :]
    visit = (j >= self.kv_start[:, None]) & (j < self.kv_end[:, None])
    full = (j >= self.full_start[:, None]) & (j < self.full_end[:, None])
    return visit.astype(np.int32) + full.astype(np.int32)

  def ranges(self, *, kv_major: bool = False):
    """int32 [4, n], the one row order of every kernel's tile walk: start, full_start, full_end, end.

    Per q tile the kv tiles (per kv tile the q tiles with kv_major, for dK/dV passes): masked head
    [start, full_start), fully visible middle [full_start, full_end), masked tail [full_end, end).
    """
    rows = ((self.q_start, self.q_full_start, self.q_full_end, self.q_end) if kv_major else
            (self.kv_start, self.full_start, self.full_end, self.kv_end))
    xp = np if isinstance(rows[0], np.ndarray) else jnp
    return xp.stack(rows).astype(np.int32)

  def num_visited(self) -> int:
    """Tiles a blockwise pass computes (static maps only)."""
    return int(np.sum(np.asarray(self.kv_end) - np.asarray(self.kv_start)))


def _key_interval(mask: Mask, p, num_keys: int, xp):
  """[lo(p), hi(p)]: the keys a query at position p sees before segment ids (empty when lo > hi)."""
  lo = xp.zeros_like(p)
  hi = xp.full_like(p, num_keys - 1)
  if mask.window is not None:
    lo = xp.maximum(lo, p - mask.window[0])
    hi = xp.minimum(hi, p + mask.window[1])
  if mask.causal:
    hi = xp.minimum(hi, p)
  return lo, hi


def _ranges_from_dense(code, xp):
  """Per column of a [rows, cols] 0/1/2 code matrix: contiguous [start, end) of >=1 and of ==2 rows."""

  def first_last(hit):
    n = hit.shape[0]
    idx = xp.arange(n)[:, None]
    any_hit = hit.any(axis=0)
    start = xp.where(hit, idx, n).min(axis=0)
    end = xp.where(hit, idx + 1, 0).max(axis=0)
    return xp.where(any_hit, start, 0), xp.where(any_hit, end, 0)

  start, end = first_last(code >= 1)
  fstart, fend = first_last(code == 2)
  return start, end, fstart, fend


def block_map(mask: Mask, q_len: int, kv_len: int, block_sizes: BlockSizes, *, has_segments: bool = False,
              q_offset=0) -> BlockMap:
  """Turn a mask into the block-level map every blockwise implementation loops over.

  Args:
    mask: the Mask.
    q_len, kv_len: T and S (any values; the last block of each may be partial and is then masked).
    block_sizes: tile sizes.
    has_segments: with segment ids no block is known to be fully visible in advance.
    q_offset: Python int (static map, NumPy) or int array [B] (traced map: the union over the batch of
      visited blocks, the intersection of fully visible ones).
  Returns:
    BlockMap.
  """
  bq, bk = block_sizes.block_q, block_sizes.block_k
  nq, nk = -(-q_len // bq), -(-kv_len // bk)
  traced = not isinstance(q_offset, (int, np.integer))
  xp = jnp if traced else np
  off = xp.reshape(xp.asarray(q_offset, dtype=xp.int32), (-1, 1))  # [B or 1, 1]

  i = xp.arange(nq, dtype=xp.int32)[None, :]
  first_row = off + i * bq  # position of each q block's first and last real row
  last_row = off + xp.minimum((i + 1) * bq, q_len) - 1
  lo_first, hi_first = _key_interval(mask, first_row, kv_len, xp)
  lo_last, hi_last = _key_interval(mask, last_row, kv_len, xp)

  # Union of the row intervals is [lo(first), hi(last)] since lo and hi are monotone and steps of 1.
  nonempty = lo_first <= hi_last
  kv_start = xp.where(nonempty, lo_first // bk, 0)
  kv_end = xp.where(nonempty, hi_last // bk + 1, 0)
  # Block j is fully visible iff lo(last) <= j*bk and (j+1)*bk - 1 <= hi(first), and holds no padding.
  full_start = -(-lo_last // bk)
  full_end = xp.minimum((hi_first + 1) // bk, kv_len // bk)
  if has_segments:
    full_end = full_start
  if traced:  # a block is skipped only if every batch row skips it, full only if full for all rows
    kv_start, kv_end = kv_start.min(0), kv_end.max(0)
    full_start, full_end = full_start.max(0), full_end.min(0)
  else:
    kv_start, kv_end, full_start, full_end = (a[0] for a in (kv_start, kv_end, full_start, full_end))
  full_start = xp.clip(full_start, kv_start, kv_end)
  full_end = xp.clip(full_end, full_start, kv_end)

  j = xp.arange(nk)[None, :]
  code = (((j >= kv_start[:, None]) & (j < kv_end[:, None])).astype(xp.int32) +
          ((j >= full_start[:, None]) & (j < full_end[:, None])).astype(xp.int32))
  q_start, q_end, q_full_start, q_full_end = _ranges_from_dense(code, xp)
  # A kv block with no fully visible q block gets (0, 0); clipped into [q_start, q_end] like the forward
  # map, so that a walk's masked tail starts at q_start rather than at q block 0.
  q_full_start = xp.clip(q_full_start, q_start, q_end)
  q_full_end = xp.clip(q_full_end, q_full_start, q_end)
  cast = (lambda a: a.astype(np.int32))
  return BlockMap(bq, bk, nq, nk, *map(cast, (kv_start, kv_end, full_start, full_end, q_start, q_end,
                                              q_full_start, q_full_end)))


def attention_flops(mask: Mask, q_len: int, kv_len: int, num_heads: int, head_dim: int, head_dim_v=None, *,
                    batch: int = 1, block_sizes: BlockSizes | None = None, backward: bool = False) -> int:
  """Matmul FLOPs of blockwise attention, counted from the block map (tiles visited x tile FLOPs).

  XLA's cost_analysis() counts a loop body once whatever its trip count, so blockwise code is counted
  here instead. Forward: QK^T and PV (2 matmuls); backward adds recomputed QK^T, dV, dP, dQ, dK (5).
  """
  head_dim_v = head_dim if head_dim_v is None else head_dim_v
  bs = block_sizes or BlockSizes(128, 128)
  tiles = block_map(mask, q_len, kv_len, bs).num_visited()
  fwd = head_dim + head_dim_v  # QK^T, PV
  bwd = 3 * head_dim + 2 * head_dim_v  # QK^T again, dV, dP, dQ, dK
  per_tile = 2 * bs.block_q * bs.block_k * (fwd + (bwd if backward else 0))
  return int(batch * num_heads * tiles * per_tile)


def segment_tile_ranges(seg, block: int):
  """Per-tile segment-id ranges: seg [B, L] int (L a multiple of block) -> (lo, hi), each [B, L // block].

  A tile pair whose ranges do not overlap (ranges_overlap) holds no visible entry and is skipped.
  """
  tiles = seg.reshape(seg.shape[0], -1, block)
  return tiles.min(-1), tiles.max(-1)


def ranges_overlap(q_lo, q_hi, k_lo, k_hi):
  """Whether a q tile's segment range [q_lo, q_hi] meets a kv tile's [k_lo, k_hi] (else: skip the tile)."""
  return (q_lo <= k_hi) & (k_lo <= q_hi)


def segment_block_overlap(q_seg, k_seg):
  """Whether one q block's and one kv block's segment ids may meet in some batch row.

  q_seg [B, bq], k_seg [B, bk] -> bool scalar (ranges_overlap of their min/max, any over B).
  """
  return jnp.any(ranges_overlap(q_seg.min(-1), q_seg.max(-1), k_seg.min(-1), k_seg.max(-1)))


def walk_tiles(ranges, body, carry, overlap=None, *, last_separately=False):
  """Run body(j, carry, masked) over one row of BlockMap.ranges(): the masked head, the fully visible
  middle (masked=False: no element-wise mask) and the masked tail, as lax.fori_loop loops.

  ranges: (start, full_start, full_end, end) scalars, start <= full_start <= full_end <= end. overlap(j)
  -> bool, if given, is asked before each masked tile (segment ranges); tiles where it is False are skipped
  (lax.cond). last_separately: stop before the last tile, which the caller runs itself (software pipelines
  such as pallas_mgpu's forward, which issue a tile's successor inside the body); the range must not be
  empty. Shared by the XLA blockwise code and the Pallas GPU kernels; the TPU kernels walk a grid axis.
  """
  start, full_start, full_end, end = ranges
  if last_separately:
    end = end - 1
    full_start, full_end = jnp.minimum(full_start, end), jnp.minimum(full_end, end)

  def masked_body(j, c):
    if overlap is None:
      return body(j, c, True)
    return lax.cond(overlap(j), lambda c: body(j, c, True), lambda c: c, c)

  carry = lax.fori_loop(start, full_start, masked_body, carry)
  carry = lax.fori_loop(full_start, full_end, lambda j, c: body(j, c, False), carry)
  return lax.fori_loop(full_end, end, masked_body, carry)


__all__ = ["Mask", "BlockSizes", "BlockMap", "block_map", "default_kv_segment_ids", "element_mask", "attention_flops",
           "ranges_overlap", "segment_block_overlap", "segment_tile_ranges", "walk_tiles"]
