"""FlashAttention forward and backward as Pallas GPU kernels (Triton lowering).

FlashAttention-2 (Dao, arXiv 2307.08691): each program owns one q tile of one query head, walks the kv
tiles with an online softmax (running max m, normaliser l, float32 accumulator) and saves the log-sum-exp.
The backward pass is two kernels that recompute p = exp(s - lse) tile by tile: one per kv tile of one kv
head (dK, dV, summed over the G query heads of the group, so GQA never repeats K and V) and one per q tile
(dQ), as in FlashAttention-2's Algorithm 2 split into two launches to avoid atomics.

Every loop walks one row of attention.mask.block_map's ranges() (passed to the kernels as a small int32
array) with attention.mask.walk_tiles: a masked head, a fully visible middle (no element-wise mask, no extra
instructions), a masked tail. Tiles outside the range are never loaded, which makes causal and
sliding-window attention skip work. With segment ids a masked tile whose q and kv per-tile segment ranges
(min/max id) cannot overlap is skipped at run time.
Logits are kept in base 2 (scale * log2(e) folded into one multiply) so the softmax uses exp2.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from attention.gpu_flash import LOG2E, Configs, Problem, gpu_problem, make_gpu_flash
from attention.kernel_utils import pad_axis
from attention.mask import BlockSizes, block_map, element_mask, ranges_overlap, segment_tile_ranges, walk_tiles

_LN2 = math.log(2.0)
NATIVE_HEAD_DIMS = (64, 128, 256)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tile sizes and Triton launch parameters of one kernel (powers of two, tiles at least 16)."""

  block_q: int
  block_k: int
  num_warps: int
  num_stages: int


# (padded head dim, 2-byte dtype?) -> Configs (one KernelConfig per kernel: forward, dK/dV with the kv tile
# outer, dQ with the q tile outer). Register pressure decides: a program holds a [block, H]
# float32 accumulator (two of them in dK/dV), so large head dims and float32 inputs get smaller tiles.
# The bf16 head-dim-128 row was swept on an H200 (benchmarks/gpu_check.py --sweep, causal L=16K): forward
# 128x128 tiles 425 TFLOP/s vs 378 for 128x64. That sweep's backward numbers (293-297 TFLOP/s for every
# setting) were an artefact: its backward jit was traced once, before the table changed, so it timed one
# program; the backward rows here are untuned until the fixed sweep (explicit configs) reruns on a GPU.
_DEFAULTS = {
    (64, True): Configs(KernelConfig(128, 64, 4, 3), KernelConfig(64, 128, 8, 2), KernelConfig(128, 64, 8, 2)),
    (128, True): Configs(KernelConfig(128, 128, 8, 3), KernelConfig(64, 128, 8, 2), KernelConfig(128, 64, 8, 2)),
    (256, True): Configs(KernelConfig(64, 64, 4, 2), KernelConfig(32, 64, 4, 2), KernelConfig(64, 32, 4, 2)),
    (64, False): Configs(KernelConfig(64, 64, 4, 2), KernelConfig(32, 64, 4, 2), KernelConfig(64, 32, 4, 2)),
    (128, False): Configs(KernelConfig(64, 32, 4, 2), KernelConfig(32, 64, 4, 2), KernelConfig(64, 32, 4, 2)),
    (256, False): Configs(KernelConfig(32, 32, 4, 1), KernelConfig(16, 32, 4, 1), KernelConfig(32, 16, 4, 1)),
}


def padded_head_dim(h: int) -> int:
  """The native head dim (64, 128, 256) a head dim is zero-padded to."""
  for native in NATIVE_HEAD_DIMS:
    if h <= native:
      return native
  raise NotImplementedError(f"pallas_gpu supports head dims up to 256, got {h}")


def default_configs(head_dim: int, dtype) -> Configs:
  """The default table entry for a (q/k) head dim and input dtype."""
  return _DEFAULTS[(padded_head_dim(head_dim), jnp.dtype(dtype).itemsize == 2)]


def _pow2_at_least(n: int) -> int:
  return max(16, 1 << (int(n) - 1).bit_length())


def configs_for(q_len: int, kv_len: int, head_dim: int, dtype, block_sizes: BlockSizes | None) -> Configs:
  """Default table (or the user's BlockSizes for all three kernels), tiles clipped to short sequences."""
  base = default_configs(head_dim, dtype)
  if block_sizes is not None:
    for name in ("block_q", "block_k"):
      b = getattr(block_sizes, name)
      if b < 16 or b & (b - 1):
        raise ValueError(f"pallas_gpu needs block_sizes.{name} to be a power of two >= 16, got {b}")
    base = Configs(*(dataclasses.replace(c, block_q=block_sizes.block_q, block_k=block_sizes.block_k)
                     for c in (base.fwd, base.dkv, base.dq)))
  # Decoding with T=1 must not pad the query to 128 rows.
  clip = lambda c: dataclasses.replace(c, block_q=min(c.block_q, _pow2_at_least(q_len)),
                                       block_k=min(c.block_k, _pow2_at_least(kv_len)))
  return Configs(clip(base.fwd), clip(base.dkv), clip(base.dq))


def _dot(a, b, *, trans_b=False):
  """2-D matmul with float32 accumulation; float32 inputs are multiplied in IEEE float32, not tf32.

  Only the second operand is ever transposed, and only as loaded from memory: Triton then reads it
  transposed from shared memory, whereas transposing a computed tile would shuffle registers.
  """
  dims = (((1,), (1 if trans_b else 0,)), ((), ()))
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _visible(mask, kv_len, q_first, k_first, bq, bk, q_seg, k_seg, *, transposed=False):
  """Element mask of a tile whose first query sits at position q_first and first key at k_first.

  [bq, bk], or [bk, bq] when transposed (the dK/dV kernel works on transposed tiles); element_mask is
  element-wise, so feeding it column/row vectors the other way round transposes the result.
  """
  q_pos = q_first + jnp.arange(bq, dtype=jnp.int32)
  k_pos = k_first + jnp.arange(bk, dtype=jnp.int32)
  q_axis, k_axis = (0, 1) if transposed else (1, 0)  # the axis each vector is broadcast along
  col = lambda x, axis: None if x is None else jnp.expand_dims(x, axis)
  return element_mask(mask, col(q_pos, q_axis), col(k_pos, k_axis), kv_len, col(q_seg, q_axis),
                      col(k_seg, k_axis))


def _fwd_kernel(ranges_ref, off_ref, q_ref, k_ref, v_ref, *rest, mask, scale2, bq, bk, kv_len, has_seg):
  """One q tile of one query head: out [bq, Hv] and lse [bq] (natural log; +inf for rows seeing no key)."""
  if has_seg:
    qseg_ref, kseg_ref, qlo_ref, qhi_ref, klo_ref, khi_ref, o_ref, lse_ref = rest
  else:
    (o_ref, lse_ref), qseg_ref = rest, None
  i = _q_tile()
  q = q_ref[...]  # [bq, H]
  q_first = off_ref[...] + i * bq
  q_seg = qseg_ref[...] if has_seg else None  # [bq]

  def body(j, carry, masked):
    m, l, acc = carry  # [bq], [bq], [bq, Hv]
    kv = pl.ds(pl.multiple_of(j * bk, bk), bk)
    s = _dot(q, k_ref[kv, :], trans_b=True) * scale2  # [bq, bk] base-2 logits
    if masked:
      k_seg = kseg_ref[kv] if has_seg else None
      s = jnp.where(_visible(mask, kv_len, q_first, j * bk, bq, bk, q_seg, k_seg), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    # A row that has seen no key yet keeps m = -inf; subtracting 0 instead avoids inf - inf.
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    p = jnp.exp2(s - m_use[:, None])  # [bq, bk]
    corr = jnp.exp2(m - m_use)
    v = v_ref[kv, :]  # [bk, Hv]
    return m_new, l * corr + p.sum(axis=1), acc * corr[:, None] + _dot(p.astype(v.dtype), v)

  init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros(o_ref.shape, jnp.float32))
  overlap = (lambda j: ranges_overlap(qlo_ref[i], qhi_ref[i], klo_ref[j], khi_ref[j])) if has_seg else None
  m, l, acc = walk_tiles(tuple(ranges_ref[r] for r in range(4)), body, init, overlap)
  seen = l > 0
  o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m * _LN2 + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)


def _dkv_kernel(ranges_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest, mask, scale,
                bq, bk, kv_len, groups, has_seg):
  """One kv tile of one kv head: dK, dV summed over its q tiles and the G query heads that read it.

  Works on transposed tiles s^T = K Q^T [bk, bq] (FlashAttention-2's Triton formulation), so that every
  matmul's first operand is a register tile in its natural layout and only loaded tiles are transposed.
  """
  if has_seg:
    qseg_ref, kseg_ref, qlo_ref, qhi_ref, klo_ref, khi_ref, dk_ref, dv_ref = rest
  else:
    (dk_ref, dv_ref), kseg_ref = rest, None
  j = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]  # [bk, H], [bk, Hv]
  k_seg = kseg_ref[...] if has_seg else None
  off = off_ref[...]

  def head(g, carry):
    def body(i, carry, masked):
      dk, dv = carry  # [bk, H], [bk, Hv] float32
      rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
      q = q_ref[rows, g, :]  # [bq, H]
      do = do_ref[rows, g, :]  # [bq, Hv]
      st = _dot(k, q, trans_b=True) * (scale * LOG2E)  # [bk, bq]
      if masked:
        q_seg = qseg_ref[rows] if has_seg else None
        vis = _visible(mask, kv_len, off + i * bq, j * bk, bq, bk, q_seg, k_seg, transposed=True)
        st = jnp.where(vis, st, -jnp.inf)
      pt = jnp.exp2(st - lse_ref[g, rows][None, :])  # lse pre-scaled to base 2; +inf rows give p = 0
      dv = dv + _dot(pt.astype(do.dtype), do)
      dst = pt * (_dot(v, do, trans_b=True) - delta_ref[g, rows][None, :])  # [bk, bq]; scale at the end
      return dk + _dot(dst.astype(q.dtype), q), dv

    overlap = (lambda i: ranges_overlap(qlo_ref[i], qhi_ref[i], klo_ref[j], khi_ref[j])) if has_seg else None
    return walk_tiles(tuple(ranges_ref[r] for r in range(4)), body, carry, overlap)

  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  dk, dv = lax.fori_loop(0, groups, head, init)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(ranges_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest, mask, scale, bq,
               bk, kv_len, has_seg):
  """One q tile of one query head: dQ summed over its kv tiles."""
  if has_seg:
    qseg_ref, kseg_ref, qlo_ref, qhi_ref, klo_ref, khi_ref, dq_ref = rest
  else:
    (dq_ref,), qseg_ref = rest, None
  i = _q_tile()
  q, do = q_ref[...], do_ref[...]  # [bq, H], [bq, Hv]
  lse2, delta = lse_ref[...][:, None], delta_ref[...][:, None]  # [bq, 1]
  q_first = off_ref[...] + i * bq
  q_seg = qseg_ref[...] if has_seg else None

  def body(j, dq, masked):
    kv = pl.ds(pl.multiple_of(j * bk, bk), bk)
    k = k_ref[kv, :]  # [bk, H]
    s = _dot(q, k, trans_b=True) * (scale * LOG2E)  # [bq, bk]
    if masked:
      k_seg = kseg_ref[kv] if has_seg else None
      s = jnp.where(_visible(mask, kv_len, q_first, j * bk, bq, bk, q_seg, k_seg), s, -jnp.inf)
    p = jnp.exp2(s - lse2)
    ds = p * (_dot(do, v_ref[kv, :], trans_b=True) - delta)
    return dq + _dot(ds.astype(k.dtype), k)

  overlap = (lambda j: ranges_overlap(qlo_ref[i], qhi_ref[i], klo_ref[j], khi_ref[j])) if has_seg else None
  dq = walk_tiles(tuple(ranges_ref[r] for r in range(4)), body, jnp.zeros(q.shape, jnp.float32), overlap)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _check_configs(configs) -> Configs:
  if not isinstance(configs, Configs):
    raise ValueError(f"pallas_gpu configs must be a pallas_gpu.Configs, got {configs!r}")
  for kernel in ("fwd", "dkv", "dq"):
    c = getattr(configs, kernel)
    if not isinstance(c, KernelConfig):
      raise ValueError(f"pallas_gpu configs.{kernel} must be a pallas_gpu.KernelConfig, got {c!r}")
    for name in ("block_q", "block_k"):
      b = getattr(c, name)
      if not isinstance(b, int) or b < 16 or b & (b - 1):
        raise ValueError(f"pallas_gpu needs configs.{kernel}.{name} to be a power of two >= 16, got {b!r}")
  return configs


def _problem(q, k, v, *, mask, segment_ids, scale, block_sizes, interpret, configs=None) -> Problem:
  # An explicit Configs (benchmarks sweep them) replaces the default table and block_sizes.
  cfg = configs_for(q.shape[1], k.shape[1], q.shape[3], q.dtype, block_sizes) if configs is None else \
      _check_configs(configs)
  kernels = (cfg.fwd, cfg.dkv, cfg.dq)  # tiles are powers of two: the largest is a multiple of the others
  return gpu_problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, interpret=interpret, configs=cfg,
                     q_multiple=max(c.block_q for c in kernels), kv_multiple=max(c.block_k for c in kernels),
                     padded_head_dim=padded_head_dim)


def _segment_inputs(c: KernelConfig, q_seg, kv_seg, q_spec, kv_spec):
  """Specs and operands of the segment ids (q ids, kv ids as the kernel reads them) and the per-tile
  segment ranges q_lo, q_hi [B, nq'], k_lo, k_hi [B, nk'] at this kernel's tiles, each row zero-padded to a
  power of two (Triton blocks); a kernel reads entry i for q tile i and entry j for kv tile j."""
  pad = lambda x: pad_axis(x, 1, _pow2_at_least(x.shape[1]))
  rng = [pad(x) for x in (*segment_tile_ranges(q_seg, c.block_q), *segment_tile_ranges(kv_seg, c.block_k))]
  row_spec = lambda x: pl.BlockSpec((None, x.shape[1]), lambda _, bi, h: (bi, 0))  # grids are (tile, B, head)
  return [q_spec, kv_spec, *map(row_spec, rng)], [q_seg, kv_seg, *rng]


def _block_map(pb, c: KernelConfig, q_offset):
  return block_map(pb.mask, pb.t, pb.s, BlockSizes(c.block_q, c.block_k), has_segments=pb.has_seg,
                   q_offset=q_offset)


def _heaviest_first(num_q_blocks):
  """Grid step -> q tile, last tile first: under a causal mask the late tiles do the most work, and
  launching them first keeps the last wave of programs short."""
  return lambda i: num_q_blocks - 1 - i


def _q_tile():
  return pl.num_programs(0) - 1 - pl.program_id(0)  # the kernels' side of _heaviest_first


def _params(c: KernelConfig):
  return plgpu.CompilerParams(num_warps=c.num_warps, num_stages=c.num_stages)


def _forward_call(pb: Problem, q, k, v, static_off, off, q_seg, kv_seg):
  """Padded q [B, Tp, N, Hp], k [B, Sp, K, Hp], v [B, Sp, K, Hvp] -> out [B, Tp, N, Hvp], lse [B, N, Tp]."""
  c = pb.configs.fwd
  bm = _block_map(pb, c, static_off)
  r = _heaviest_first(bm.num_q_blocks)
  b, _, n, _ = q.shape
  g = pb.groups
  in_specs = [
      pl.BlockSpec((4, None), lambda i, bi, h: (0, r(i))),
      pl.BlockSpec((None,), lambda i, bi, h: (bi,)),
      pl.BlockSpec((None, c.block_q, None, pb.hp), lambda i, bi, h: (bi, r(i), h, 0)),
      pl.BlockSpec((None, pb.sp, None, pb.hp), lambda i, bi, h: (bi, 0, lax.div(h, g), 0)),  # GQA
      pl.BlockSpec((None, pb.sp, None, pb.hvp), lambda i, bi, h: (bi, 0, lax.div(h, g), 0)),
  ]
  args = [jnp.asarray(bm.ranges()), off, q, k, v]
  if pb.has_seg:
    specs, ops = _segment_inputs(c, q_seg, kv_seg, pl.BlockSpec((None, c.block_q), lambda i, bi, h: (bi, r(i))),
                                 pl.BlockSpec((None, pb.sp), lambda i, bi, h: (bi, 0)))
    in_specs, args = in_specs + specs, args + ops
  kernel = functools.partial(_fwd_kernel, mask=pb.mask, scale2=pb.scale2, bq=c.block_q, bk=c.block_k,
                             kv_len=pb.s, has_seg=pb.has_seg)
  return pl.pallas_call(
      kernel,
      grid=(bm.num_q_blocks, b, n),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, c.block_q, None, pb.hvp), lambda i, bi, h: (bi, r(i), h, 0)),
                 pl.BlockSpec((None, None, c.block_q), lambda i, bi, h: (bi, h, r(i)))],
      out_shape=[jax.ShapeDtypeStruct((b, pb.tp, n, pb.hvp), q.dtype),
                 jax.ShapeDtypeStruct((b, n, pb.tp), jnp.float32)],
      compiler_params=_params(c),
      interpret=pb.interpret,
      name="flash_fwd",
  )(*args)


def _backward_call(pb: Problem, q, k, v, do, lse2, delta, static_off, off, q_seg, kv_seg):
  """Padded operands, lse2 = lse * log2(e) and delta [B, N, Tp] -> dq, dk, dv (padded, input dtypes)."""
  b, _, n, _ = q.shape
  kh, g = k.shape[2], pb.groups

  c = pb.configs.dkv
  bm = _block_map(pb, c, static_off)
  in_specs = [
      pl.BlockSpec((4, None), lambda j, bi, h: (0, j)),
      pl.BlockSpec((None,), lambda j, bi, h: (bi,)),
      pl.BlockSpec((None, pb.tp, g, pb.hp), lambda j, bi, h: (bi, 0, h, 0)),  # the G heads reading kv head h
      pl.BlockSpec((None, c.block_k, None, pb.hp), lambda j, bi, h: (bi, j, h, 0)),
      pl.BlockSpec((None, c.block_k, None, pb.hvp), lambda j, bi, h: (bi, j, h, 0)),
      pl.BlockSpec((None, pb.tp, g, pb.hvp), lambda j, bi, h: (bi, 0, h, 0)),
      pl.BlockSpec((None, g, pb.tp), lambda j, bi, h: (bi, h, 0)),
      pl.BlockSpec((None, g, pb.tp), lambda j, bi, h: (bi, h, 0)),
  ]
  args = [jnp.asarray(bm.ranges(kv_major=True)), off, q, k, v, do, lse2, delta]
  if pb.has_seg:
    specs, ops = _segment_inputs(c, q_seg, kv_seg, pl.BlockSpec((None, pb.tp), lambda j, bi, h: (bi, 0)),
                                 pl.BlockSpec((None, c.block_k), lambda j, bi, h: (bi, j)))
    in_specs, args = in_specs + specs, args + ops
  kernel = functools.partial(_dkv_kernel, mask=pb.mask, scale=pb.scale, bq=c.block_q, bk=c.block_k,
                             kv_len=pb.s, groups=g, has_seg=pb.has_seg)
  dk, dv = pl.pallas_call(
      kernel,
      grid=(bm.num_kv_blocks, b, kh),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, c.block_k, None, pb.hp), lambda j, bi, h: (bi, j, h, 0)),
                 pl.BlockSpec((None, c.block_k, None, pb.hvp), lambda j, bi, h: (bi, j, h, 0))],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_params(c),
      interpret=pb.interpret,
      name="flash_bwd_dkv",
  )(*args)

  c = pb.configs.dq
  bm = _block_map(pb, c, static_off)
  r = _heaviest_first(bm.num_q_blocks)
  in_specs = [
      pl.BlockSpec((4, None), lambda i, bi, h: (0, r(i))),
      pl.BlockSpec((None,), lambda i, bi, h: (bi,)),
      pl.BlockSpec((None, c.block_q, None, pb.hp), lambda i, bi, h: (bi, r(i), h, 0)),
      pl.BlockSpec((None, pb.sp, None, pb.hp), lambda i, bi, h: (bi, 0, lax.div(h, g), 0)),
      pl.BlockSpec((None, pb.sp, None, pb.hvp), lambda i, bi, h: (bi, 0, lax.div(h, g), 0)),
      pl.BlockSpec((None, c.block_q, None, pb.hvp), lambda i, bi, h: (bi, r(i), h, 0)),
      pl.BlockSpec((None, None, c.block_q), lambda i, bi, h: (bi, h, r(i))),
      pl.BlockSpec((None, None, c.block_q), lambda i, bi, h: (bi, h, r(i))),
  ]
  args = [jnp.asarray(bm.ranges()), off, q, k, v, do, lse2, delta]
  if pb.has_seg:
    specs, ops = _segment_inputs(c, q_seg, kv_seg, pl.BlockSpec((None, c.block_q), lambda i, bi, h: (bi, r(i))),
                                 pl.BlockSpec((None, pb.sp), lambda i, bi, h: (bi, 0)))
    in_specs, args = in_specs + specs, args + ops
  kernel = functools.partial(_dq_kernel, mask=pb.mask, scale=pb.scale, bq=c.block_q, bk=c.block_k, kv_len=pb.s,
                             has_seg=pb.has_seg)
  dq = pl.pallas_call(
      kernel,
      grid=(bm.num_q_blocks, b, n),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, c.block_q, None, pb.hp), lambda i, bi, h: (bi, r(i), h, 0)),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_params(c),
      interpret=pb.interpret,
      name="flash_bwd_dq",
  )(*args)
  return dq, dk, dv


# interpret=True runs the kernels in Pallas interpret mode (any backend), else they lower through Triton;
# configs: an explicit Configs for all three kernels instead of the default table (benchmarks/gpu_check.py).
FLASH = make_gpu_flash(_problem, _forward_call, _backward_call, __name__)
# The public functions (arguments and results: attention.flash_vjp), plus `interpret` and `configs`.
flash_forward = FLASH.forward
flash_backward = FLASH.backward
flash_attention_with_lse = FLASH.attention_with_lse
flash_attention = FLASH.attention
