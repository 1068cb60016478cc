"""Blockwise FlashAttention in plain JAX: exact attention in O(L) memory on any backend.

FlashAttention (Dao et al., arXiv 2205.14135; FlashAttention-2, arXiv 2307.08691): for each q block, loop
over the kv blocks the block map allows, keeping a running max m, normaliser l and output accumulator
(online softmax), and save the log-sum-exp. The backward pass (custom_vjp) recomputes each probability
tile from the saved log-sum-exp, so neither pass builds an L x L array.

Each loop runs over exactly one row of attention.mask.block_map's ranges() with attention.mask.walk_tiles:
masked head, fully visible middle (no element-wise mask), masked tail. Blocks outside the range are never
touched, which is what makes causal and sliding-window attention cheaper than full attention. With segment
ids a masked tile whose q and kv per-tile segment ranges cannot overlap is skipped at run time.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from attention.flash_vjp import make_flash
from attention.kernel_utils import pad_axis, round_up
from attention.mask import BlockSizes, block_map, element_mask, ranges_overlap, segment_tile_ranges, walk_tiles

DEFAULT_BLOCK_SIZES = BlockSizes(block_q=256, block_k=256)


class _Problem:
  """Facts of one call (lengths, tiles, offsets, padded segment ids) and the per-tile helpers of both passes."""

  def __init__(self, mask, q_len, kv_len, bs, q_offset, q_seg, kv_seg, scale):
    self.mask, self.q_len, self.kv_len, self.bs, self.scale = mask, q_len, kv_len, bs, scale
    self.q_seg, self.kv_seg = q_seg, kv_seg  # [B, Tp], [B, Sp] or None
    self.off = jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1))  # [B|1, 1]
    self.map = block_map(mask, q_len, kv_len, bs, has_segments=q_seg is not None, q_offset=q_offset)
    if q_seg is not None:  # per-tile segment-id ranges, ([B, nq], [B, nq]) and ([B, nk], [B, nk])
      self.seg_ranges = (segment_tile_ranges(q_seg, bs.block_q), segment_tile_ranges(kv_seg, bs.block_k))

  def visible(self, i, j):
    """[B|1, 1, 1, bq, bk] element mask of tile (i, j)."""
    bq, bk = self.bs.block_q, self.bs.block_k
    q_pos = self.off + i * bq + jnp.arange(bq, dtype=jnp.int32)[None]  # [B|1, bq]
    k_pos = j * bk + jnp.arange(bk, dtype=jnp.int32)[None]  # [1, bk]
    q_seg = k_seg = None
    if self.q_seg is not None:
      q_seg = lax.dynamic_slice_in_dim(self.q_seg, i * bq, bq, 1)[:, :, None]
      k_seg = lax.dynamic_slice_in_dim(self.kv_seg, j * bk, bk, 1)[:, None, :]
    vis = element_mask(self.mask, q_pos[:, :, None], k_pos[:, None, :], self.kv_len, q_seg, k_seg)
    return vis[:, None, None]

  def overlap(self, i, j):
    """Whether tile (i, j)'s segment ranges meet in some batch row (documents packed in one row)."""
    (q_lo, q_hi), (k_lo, k_hi) = self.seg_ranges
    return jnp.any(ranges_overlap(q_lo[:, i], q_hi[:, i], k_lo[:, j], k_hi[:, j]))

  def walk(self, ranges, body, carry, tile_pair):
    """walk_tiles over one ranges row; tile_pair(j) -> (q tile, kv tile) names the tiles of step j."""
    overlap = None if self.q_seg is None else (lambda j: self.overlap(*tile_pair(j)))
    return walk_tiles(ranges, body, carry, overlap)

  def scores(self, qi, kj, i, j, masked):
    """qi [B, K, G, bq, H], kj [B, K, bk, H] -> float32 [B, K, G, bq, bk] scaled, -inf where masked."""
    s = jnp.einsum("bkgqh,bksh->bkgqs", qi, kj, preferred_element_type=jnp.float32) * self.scale
    if masked:
      s = jnp.where(self.visible(i, j), s, -jnp.inf)
    return s


def _forward(pb: _Problem, q, k, v):
  """q [B, K, G, Tp, H], k [B, K, Sp, H], v [B, K, Sp, Hv] -> out [B, K, G, Tp, Hv] f32, lse [B, K, G, Tp]."""
  bq, bk = pb.bs.block_q, pb.bs.block_k
  bm = pb.map
  b, kh, g, _, _ = q.shape
  hv = v.shape[-1]

  def one_q_block(i):
    qi = lax.dynamic_slice_in_dim(q, i * bq, bq, 3)  # [B, K, G, bq, H]

    def body(j, carry, masked):
      m, l, acc = carry
      kj = lax.dynamic_slice_in_dim(k, j * bk, bk, 2)  # [B, K, bk, H]
      vj = lax.dynamic_slice_in_dim(v, j * bk, bk, 2)  # [B, K, bk, Hv]
      s = pb.scores(qi, kj, i, j, masked)  # [B, K, G, bq, bk]
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # a row with nothing visible yet
      p = jnp.exp(s - m_safe[..., None])
      corr = jnp.exp(m - m_safe)
      pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
      return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

    init = (jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32), jnp.zeros((b, kh, g, bq), jnp.float32),
            jnp.zeros((b, kh, g, bq, hv), jnp.float32))
    m, l, acc = pb.walk(jnp.asarray(bm.ranges())[:, i], body, init, lambda j: (i, j))
    out = acc / jnp.where(l == 0, 1.0, l)[..., None]  # a row that sees no key returns zeros
    lse = jnp.where(l > 0, m + jnp.log(l), jnp.inf)  # +inf makes exp(s - lse) = 0 in the backward
    return out, lse

  out, lse = lax.map(one_q_block, jnp.arange(bm.num_q_blocks))  # [nq, B, K, G, bq, (Hv)]
  out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, -1, hv)
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, -1)
  return out, lse


def _backward(pb: _Problem, q, k, v, lse, delta, do):
  """dq, dk, dv (f32, head-major) from the saved lse [B, K, G, Tp] and delta = rowsum(dO * O)."""
  bq, bk = pb.bs.block_q, pb.bs.block_k
  bm = pb.map

  def one_kv_block(j, dq):
    kj = lax.dynamic_slice_in_dim(k, j * bk, bk, 2)  # [B, K, bk, H]
    vj = lax.dynamic_slice_in_dim(v, j * bk, bk, 2)  # [B, K, bk, Hv]

    def body(i, carry, masked):
      dq, dk, dv = carry
      qi = lax.dynamic_slice_in_dim(q, i * bq, bq, 3)  # [B, K, G, bq, H]
      doi = lax.dynamic_slice_in_dim(do, i * bq, bq, 3)  # [B, K, G, bq, Hv]
      lse_i = lax.dynamic_slice_in_dim(lse, i * bq, bq, 3)  # [B, K, G, bq]
      delta_i = lax.dynamic_slice_in_dim(delta, i * bq, bq, 3)
      s = pb.scores(qi, kj, i, j, masked)  # [B, K, G, bq, bk]
      p = jnp.exp(s - lse_i[..., None])
      # Summing over g (the query heads of one kv head) gives GQA its dK/dV without repeating K, V.
      dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p.astype(do.dtype), doi, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bkgqh,bksh->bkgqs", doi, vj, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i[..., None]) * pb.scale
      dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds.astype(q.dtype), qi, preferred_element_type=jnp.float32)
      dqi = lax.dynamic_slice_in_dim(dq, i * bq, bq, 3) + jnp.einsum(
          "bkgqs,bksh->bkgqh", ds.astype(k.dtype), kj, preferred_element_type=jnp.float32)
      return lax.dynamic_update_slice_in_dim(dq, dqi, i * bq, 3), dk, dv

    init = (dq, jnp.zeros(kj.shape, jnp.float32), jnp.zeros(vj.shape, jnp.float32))
    return pb.walk(jnp.asarray(bm.ranges(kv_major=True))[:, j], body, init, lambda i: (i, j))

  def scan_body(dq, j):
    dq, dk, dv = one_kv_block(j, dq)
    return dq, (dk, dv)

  dq, (dk, dv) = lax.scan(scan_body, jnp.zeros(q.shape, jnp.float32), jnp.arange(bm.num_kv_blocks))
  b, kh, _, h = k.shape
  dk = jnp.moveaxis(dk, 0, 2).reshape(b, kh, -1, h)  # [nk, B, K, bk, H] -> [B, K, Sp, H]
  dv = jnp.moveaxis(dv, 0, 2).reshape(b, kh, -1, v.shape[-1])
  return dq, dk, dv


def _to_head_major(q, k, v, bs):
  """BTNH -> padded [B, K, G, Tp, H], [B, K, Sp, H], [B, K, Sp, Hv]."""
  b, t, n, h = q.shape
  kh = k.shape[2]
  tp, sp = round_up(t, bs.block_q), round_up(k.shape[1], bs.block_k)
  qh = pad_axis(q, 1, tp).reshape(b, tp, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
  kh_ = pad_axis(k, 1, sp).transpose(0, 2, 1, 3)
  vh = pad_axis(v, 1, sp).transpose(0, 2, 1, 3)
  return qh, kh_, vh


def _from_head_major(x, t):
  """[B, K, G, Tp, D] -> [B, T, K*G, D]."""
  b, kh, g, _, d = x.shape
  return x.transpose(0, 3, 1, 2, 4)[:, :t].reshape(b, t, kh * g, d)


def _problem(q, k, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes) -> _Problem:
  """The tiles of one call (arguments normalised by attention.flash_vjp)."""
  t, s = q.shape[1], k.shape[1]
  bs = block_sizes or DEFAULT_BLOCK_SIZES
  # Tiles never larger than the (8-rounded) sequence: decoding with T=1 must not pad to 512 rows.
  bs = BlockSizes(min(bs.block_q, round_up(t, 8)), min(bs.block_k, round_up(s, 8)))
  tp, sp = round_up(t, bs.block_q), round_up(s, bs.block_k)
  # Edge padding keeps the last tile's segment range tight (padding is masked by position anyway).
  pad_seg = lambda seg, n: None if seg is None else pad_axis(seg, 1, n, mode="edge")
  return _Problem(mask, t, s, bs, q_offset, pad_seg(segment_ids, tp), pad_seg(kv_segment_ids, sp), scale)


def _flash_forward(q, k, v, **kw):
  """attention.flash_vjp's forward: (out [B, T, N, Hv] in q's dtype, lse [B, N, T] float32)."""
  pb = _problem(q, k, **kw)
  t = q.shape[1]
  qh, kh, vh = _to_head_major(q, k, v, pb.bs)
  out, lse = _forward(pb, qh, kh, vh)
  b, n = q.shape[0], q.shape[2]
  return _from_head_major(out, t).astype(q.dtype), lse[:, :, :, :t].reshape(b, n, t)


def _flash_backward(q, k, v, lse, do, delta, **kw):
  """attention.flash_vjp's backward: (dq, dk, dv) from lse and delta [B, N, T], tile by tile."""
  pb = _problem(q, k, **kw)
  t, s = q.shape[1], k.shape[1]
  qh, kh, vh = _to_head_major(q, k, v, pb.bs)
  doh = _to_head_major(do, k, v, pb.bs)[0]
  b, kvh, g, tp, _ = qh.shape
  to_rows = lambda x: pad_axis(x.astype(jnp.float32).reshape(b, kvh, g, t), 3, tp)  # [B, N, T] -> [B, K, G, Tp]
  dq, dk, dv = _backward(pb, qh, kh, vh, to_rows(lse), to_rows(delta), doh.astype(q.dtype))
  dq = _from_head_major(dq, t).astype(q.dtype)
  dk = dk.transpose(0, 2, 1, 3)[:, :s].astype(k.dtype)
  dv = dv.transpose(0, 2, 1, 3)[:, :s].astype(v.dtype)
  return dq, dk, dv


FLASH = make_flash(_flash_forward, _flash_backward)
# The public functions (arguments and results: attention.flash_vjp). flash_forward and flash_backward take
# q_offset < 0 and, in flash_backward, the global out and lse of a larger attention (ring attention).
flash_forward = FLASH.forward
flash_backward = FLASH.backward
flash_attention_with_lse = FLASH.attention_with_lse
flash_attention = FLASH.attention
