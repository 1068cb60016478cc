"""FlashAttention for TPU as Pallas (Mosaic) kernels: forward, dK/dV and dQ.

FlashAttention (Dao et al., arXiv 2205.14135) and FlashAttention-2 (arXiv 2307.08691): each q tile walks
the kv tiles it may see with a running max m, normaliser l and float32 accumulator in VMEM (online
softmax) and saves the log-sum-exp; the backward pass recomputes p = exp(s - lse) tile by tile.

What is TPU-specific here:
- The kv tiles a q tile visits come from attention.mask.block_map and are scalar-prefetched into SMEM
  (PrefetchScalarGridSpec). Grid step `t` of q tile i visits kv tile kv_start[i] + t; the index map clamps
  it to the visited range, so steps past the range re-name the tile already in VMEM (the pipeline issues
  no DMA) and pl.when skips their compute. Causal and sliding-window attention therefore neither copy nor
  compute skipped tiles. The element-wise mask (attention.mask.element_mask, the one shared rule) runs
  only on partly visible tiles; with segment ids a tile whose q and kv id ranges are disjoint is skipped.
- Per-row values are kept in the layouts of splash attention: the running m and l lane-replicated
  [bq, 128] in VMEM; lse and delta in HBM as compact rows [B, N, 1, Tp] (the forward writes lse through
  one [bq, 128] -> [128, bq] transpose per q tile, 8 sublanes [B, N, 8, Tp]); segment ids replicated
  along the axis they are broadcast over ([Tp, 128] or [8, Tp]).
- GQA is an index map (q head n reads kv head n // G); the dK/dV kernel walks the G query heads of a kv
  head as a grid axis and sums them in its VMEM accumulator, so K and V are never repeated.
- Tiles are multiples of 128 rows; T and S are padded inside (padding is masked by position), head dims
  other than 64 or a multiple of 128 are zero-padded. float16 runs as float32 (TPUs have no fp16 unit).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from attention.flash_vjp import make_flash
from attention.kernel_utils import pad_axis, round_up, split_offset
from attention.mask import BlockSizes, Mask, block_map, element_mask, ranges_overlap, segment_tile_ranges

NUM_LANES = 128
NUM_SUBLANES = 8
# Default tiles by (padded) head dim: the f32 [bq, bk] score tiles of the backward pass dominate VMEM.
DEFAULT_BLOCK_SIZES = {64: BlockSizes(512, 512), 128: BlockSizes(512, 512), 256: BlockSizes(256, 512)}
_NN = (((1,), (0,)), ((), ()))  # a @ b
_NT = (((1,), (1,)), ((), ()))  # a @ b.T


def _padded_head_dim(h: int) -> int:
  return h if h == 64 or h % NUM_LANES == 0 else (64 if h < 64 else round_up(h, NUM_LANES))


def _interpret_arg(interpret: bool):
  """pallas_call's interpret argument: the TPU interpreter (simulates DMAs and SMEM) where available."""
  if not interpret:
    return False
  return pltpu.InterpretParams() if hasattr(pltpu, "InterpretParams") else True


@dataclasses.dataclass(frozen=True)
class _Problem:
  """Static facts of one call (the one name every kernel file uses), shared by the kernels and index maps."""

  mask: Mask
  scale: float
  kv_len: int  # S; keys at or past it are padding
  block_q: int
  block_k: int
  q_tiles: int  # Tp // block_q
  kv_tiles: int  # Sp // block_k
  groups: int  # G = N // K
  has_seg: bool
  interpret: bool


def _lanes(x, width):
  """[rows, 128] lane-replicated -> [rows, width] (width a multiple of 128, or 64)."""
  return jnp.tile(x, (1, -(-width // NUM_LANES)))[:, :width]


def _tile_visible(pb, off, i, j, q_seg_ref, kv_seg_ref, *, kv_major=False):
  """Bool [bq, bk] ([bk, bq] if kv_major) of tile (q tile i, kv tile j): the shared element-wise rule.

  Segment ids arrive replicated along the axis they are broadcast over: q-major tiles read q ids
  [bq, 128] and kv ids [8, bk]; kv-major tiles read kv ids [bk, 128] and q ids [8, bq].
  """
  bq, bk = pb.block_q, pb.block_k
  shape, q_axis = ((bk, bq), 1) if kv_major else ((bq, bk), 0)
  q_pos = off + i * bq + lax.broadcasted_iota(jnp.int32, shape, q_axis)
  k_pos = j * bk + lax.broadcasted_iota(jnp.int32, shape, 1 - q_axis)
  q_ids = k_ids = None
  if pb.has_seg and kv_major:
    q_ids = jnp.broadcast_to(q_seg_ref[:1, :], shape)
    k_ids = _lanes(kv_seg_ref[...], bq)
  elif pb.has_seg:
    q_ids = _lanes(q_seg_ref[...], bk)
    k_ids = jnp.broadcast_to(kv_seg_ref[:1, :], shape)
  return element_mask(pb.mask, q_pos, k_pos, pb.kv_len, q_ids, k_ids)


def _run_tile(pb, ranges, seg_rng, b, i, j, tile, *, kv_major=False):
  """Call tile(masked) under pl.when if tile (q tile i, kv tile j) is visited.

  ranges [4, n]: BlockMap.ranges() (start, full_start, full_end, end), per q tile (per kv tile in the
  kv-major dK/dV pass). seg_rng (q_lo, q_hi [B * q_tiles], k_lo, k_hi [B * kv_tiles]): per-tile
  segment-id ranges, flat so that SMEM holds no padded 2D tables.
  """
  outer, inner = (j, i) if kv_major else (i, j)
  run = inner < ranges[3, outer]
  masked = (inner < ranges[1, outer]) | (inner >= ranges[2, outer])
  if pb.has_seg:  # i or j may step past the last tile here (then run is already False): clamp the lookup
    q_lo, q_hi, k_lo, k_hi = seg_rng
    qi = b * pb.q_tiles + jnp.minimum(i, pb.q_tiles - 1)
    kj = b * pb.kv_tiles + jnp.minimum(j, pb.kv_tiles - 1)
    overlap = ranges_overlap(q_lo[qi], q_hi[qi], k_lo[kj], k_hi[kj])
    run &= jnp.logical_not(masked) | overlap
  pl.when(run & masked)(functools.partial(tile, True))
  pl.when(run & jnp.logical_not(masked))(functools.partial(tile, False))


def _split_prefetch(pb, refs):
  """(ranges, off, seg_rng or None, remaining refs) from a kernel's argument list."""
  ranges, off, refs = refs[0], refs[1], refs[2:]
  if pb.has_seg:
    return ranges, off, refs[:4], refs[4:]
  return ranges, off, None, refs


def _dot(a, b, dims=_NN):
  """f32-accumulated matmul of two tiles.

  float32 tiles follow jax_default_matmul_precision; 16-bit tiles use the MXU's native single pass
  (an explicit DEFAULT: Mosaic rejects HIGHEST on bf16 operands, "Bad lhs type").
  """
  precision = None if a.dtype == jnp.float32 else lax.Precision.DEFAULT
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _scores(pb, a, b, visible):
  """a [ra, H], b [rb, H] -> f32 [ra, rb] scaled logits a @ b.T, -inf where not visible (None: all)."""
  s = _dot(a, b, _NT) * pb.scale
  return s if visible is None else jnp.where(visible, s, -jnp.inf)


def _fwd_kernel(*refs, pb, num_steps):
  ranges, off, seg_rng, refs = _split_prefetch(pb, refs)
  q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
  b, i, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  j = ranges[0, i] + step
  hv = acc_sc.shape[-1]

  @pl.when(step == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def tile(masked):
    visible = _tile_visible(pb, off[b], i, j, q_seg_ref, kv_seg_ref) if masked else None
    s = _scores(pb, q_ref[...], k_ref[...], visible)  # [bq, bk]
    m_prev = m_sc[...]  # [bq, 128]
    m_new = jnp.maximum(m_prev, lax.broadcast_in_dim(s.max(-1), m_prev.shape, (0,)))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # a row that has seen nothing yet: avoid inf - inf
    p = jnp.exp(s - _lanes(m_safe, pb.block_k))  # [bq, bk]
    corr = jnp.exp(m_prev - m_safe)  # [bq, 128]
    m_sc[...] = m_new
    l_sc[...] = l_sc[...] * corr + lax.broadcast_in_dim(p.sum(-1), m_prev.shape, (0,))
    v = v_ref[...]  # [bk, Hv]
    pv = _dot(p.astype(v.dtype), v)  # [bq, Hv]
    acc_sc[...] = acc_sc[...] * _lanes(corr, hv) + pv

  _run_tile(pb, ranges, seg_rng, b, i, j, tile)

  @pl.when(step == num_steps - 1)
  def _finalize():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] / _lanes(jnp.where(l == 0.0, 1.0, l), hv)).astype(o_ref.dtype)  # no key: 0
    lse = jnp.where(l > 0.0, m_sc[...] + jnp.log(l), jnp.inf)  # [bq, 128]; +inf: exp(s - lse) = 0 later
    lse_ref[...] = lse.T[:NUM_SUBLANES]  # [8, bq]: a row per q tile, not 128 copies of each value


def _softmax_grad(pb, s, dp, lse, delta):
  """Recomputed p = exp(s - lse) and ds = p * (dP - delta) * scale (FlashAttention-2, Alg. 2), f32.

  lse = +inf on rows that see no key, so p = 0 there. All arguments are broadcast to the tile's shape.
  """
  p = jnp.exp(s - lse)
  return p, p * (dp - delta) * pb.scale


def _dkdv_kernel(*refs, pb, num_steps):
  ranges, off, seg_rng, refs = _split_prefetch(pb, refs)
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref, dk_ref, dv_ref,
   dk_sc, dv_sc) = refs
  b, j, g, step = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  i = ranges[0, j] + step

  @pl.when((g == 0) & (step == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def tile(masked):
    # Kv-major tiles (s transposed, as in splash attention): dV = P^T dO and dK = dS^T Q become plain
    # matmuls, and the per-query lse and delta are rows [1, bq] broadcast over sublanes.
    visible = _tile_visible(pb, off[b], i, j, q_seg_ref, kv_seg_ref, kv_major=True) if masked else None
    q, do = q_ref[...], do_ref[...]  # [bq, H], [bq, Hv]
    s = _scores(pb, k_ref[...], q, visible)  # [bk, bq]
    dp = _dot(v_ref[...], do, _NT)  # [bk, bq]
    row = lambda ref: jnp.broadcast_to(ref[...], s.shape)  # [1, bq] -> [bk, bq]
    p, ds = _softmax_grad(pb, s, dp, row(lse_ref), row(delta_ref))
    dv_sc[...] += _dot(p.astype(do.dtype), do)  # [bk, Hv]
    dk_sc[...] += _dot(ds.astype(q.dtype), q)  # [bk, H]

  _run_tile(pb, ranges, seg_rng, b, i, j, tile, kv_major=True)

  @pl.when((g == pb.groups - 1) & (step == num_steps - 1))
  def _finalize():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, pb, num_steps):
  ranges, off, seg_rng, refs = _split_prefetch(pb, refs)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref, dq_ref, dq_sc = refs
  b, i, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  j = ranges[0, i] + step

  @pl.when(step == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def tile(masked):
    visible = _tile_visible(pb, off[b], i, j, q_seg_ref, kv_seg_ref) if masked else None
    k = k_ref[...]  # [bk, H]
    s = _scores(pb, q_ref[...], k, visible)  # [bq, bk]
    dp = _dot(do_ref[...], v_ref[...], _NT)  # [bq, bk]
    col = lambda ref: lax.broadcast_in_dim(ref[0], s.shape, (0,))  # [1, bq] -> [bq, bk]
    _, ds = _softmax_grad(pb, s, dp, col(lse_ref), col(delta_ref))
    dq_sc[...] += _dot(ds.astype(k.dtype), k)  # [bq, H]

  _run_tile(pb, ranges, seg_rng, b, i, j, tile)

  @pl.when(step == num_steps - 1)
  def _finalize():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


@dataclasses.dataclass(frozen=True)
class _Operands:
  """Padded head-major operands, scalar-prefetch tables and grid extents of one call."""

  q: jax.Array  # [B, N, Tp, Hp]
  k: jax.Array  # [B, K, Sp, Hp]
  v: jax.Array  # [B, K, Sp, Hvp]
  q_ids: jax.Array | None  # [B, Tp] int32 segment ids, padded with the edge value
  kv_ids: jax.Array | None  # [B, Sp]
  ranges: jax.Array  # [4, nq] BlockMap.ranges(): kv tiles of each q tile
  ranges_t: jax.Array  # [4, nk] BlockMap.ranges(kv_major=True): q tiles of each kv tile
  off: jax.Array  # [B] int32 position of each row's first query
  seg_rng: tuple  # () or (q_lo [B * nq], q_hi, k_lo [B * nk], k_hi)
  kv_steps: int  # grid steps over kv tiles per q tile
  q_steps: int  # grid steps over q tiles per kv tile


def _default_block_sizes(head_dim: int) -> BlockSizes:
  fits = [d for d in DEFAULT_BLOCK_SIZES if d >= head_dim]
  return DEFAULT_BLOCK_SIZES[min(fits)] if fits else BlockSizes(128, 256)


def _problem(q, k, v, *, mask, segment_ids, scale, block_sizes, interpret) -> _Problem:
  t, s, h, hv = q.shape[1], k.shape[1], q.shape[-1], v.shape[-1]
  if block_sizes is not None and (block_sizes.block_q % NUM_LANES or block_sizes.block_k % NUM_LANES):
    raise ValueError(f"pallas_tpu needs block_sizes that are multiples of {NUM_LANES} (TPU tiling), "
                     f"got {block_sizes!r}")
  bs = block_sizes or _default_block_sizes(max(_padded_head_dim(h), _padded_head_dim(hv)))
  # Tiles never larger than the (128-rounded) sequence: decoding with T=1 must not pad to 512 rows.
  bq, bk = min(bs.block_q, round_up(t, NUM_LANES)), min(bs.block_k, round_up(s, NUM_LANES))
  interpret = jax.default_backend() == "cpu" if interpret is None else bool(interpret)
  return _Problem(mask, scale, s, bq, bk, -(-t // bq), -(-s // bk), q.shape[2] // k.shape[2],
                 segment_ids is not None, interpret)


def _head_major(x, rows, d):
  """[B, L, N, D] -> [B, N, Lp, Dp] zero-padded; float16 becomes float32 (TPUs have no fp16 matmul)."""
  x = x.astype(jnp.float32) if x.dtype == jnp.float16 else x
  return pad_axis(pad_axis(x, 1, rows), 3, d).transpose(0, 2, 1, 3)


def _operands(pb, q, k, v, segment_ids, kv_segment_ids, q_offset) -> _Operands:
  b, t, s = q.shape[0], q.shape[1], k.shape[1]
  bq, bk = pb.block_q, pb.block_k
  tp, sp = round_up(t, bq), round_up(s, bk)
  hp, hvp = _padded_head_dim(q.shape[-1]), _padded_head_dim(v.shape[-1])
  static_off, off = split_offset(q_offset, b)
  traced = not isinstance(static_off, int)
  bm = block_map(pb.mask, t, s, BlockSizes(bq, bk), has_segments=pb.has_seg, q_offset=static_off)
  ranges, ranges_t = bm.ranges(), bm.ranges(kv_major=True)
  if traced:  # ranges unknown at trace time: enough steps for any
    kv_steps, q_steps = bm.num_kv_blocks, bm.num_q_blocks
  else:
    kv_steps = max(1, int(np.max(bm.kv_end - bm.kv_start)))
    q_steps = max(1, int(np.max(bm.q_end - bm.q_start)))
  q_ids = kv_ids = None
  seg_rng = ()
  if pb.has_seg:
    q_ids = pad_axis(segment_ids, 1, tp, mode="edge")  # edge padding keeps tile ranges tight
    kv_ids = pad_axis(kv_segment_ids, 1, sp, mode="edge")
    seg_rng = tuple(x.reshape(-1) for x in (*segment_tile_ranges(q_ids, bq), *segment_tile_ranges(kv_ids, bk)))
  return _Operands(_head_major(q, tp, hp), _head_major(k, sp, hp), _head_major(v, sp, hvp), q_ids, kv_ids,
                   ranges, ranges_t, off, seg_rng, kv_steps, q_steps)


def _as_lanes(x):
  """[..., L] -> [..., L, 128]: one row value per sublane, replicated over lanes (a column of the tile)."""
  return None if x is None else lax.broadcast_in_dim(x, (*x.shape, NUM_LANES), tuple(range(x.ndim)))


def _as_sublanes(x):
  """[..., L] -> [..., 8, L]: replicated over sublanes (a row of the tile)."""
  if x is None:
    return None
  return lax.broadcast_in_dim(x, (*x.shape[:-1], NUM_SUBLANES, x.shape[-1]), (*range(x.ndim - 1), x.ndim))


def _clamped(ranges, i, step):
  """Tile visited at `step` of row i of a range table, clamped into the range so idle steps reuse a tile."""
  return jnp.minimum(ranges[0, i] + step, jnp.maximum(ranges[3, i] - 1, ranges[0, i]))


def _call(kernel, pb, prefetch, grid, in_specs, args, out_specs, out_shape, scratch, name):
  """pallas_call over `grid`; its leading axes are independent, the trailing accumulation axes sequential."""
  grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=len(prefetch), grid=grid, in_specs=in_specs,
                                           out_specs=out_specs, scratch_shapes=scratch)
  semantics = ("parallel",) * 3 + ("arbitrary",) * (len(grid) - 3)
  return pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=out_shape,
                        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
                        interpret=_interpret_arg(pb.interpret), name=name)(*prefetch, *args)


def _block(rows, cols, index_map):
  """Spec of a [rows, cols] tile of a [B, heads, L, D] array (batch and head squeezed)."""
  return pl.BlockSpec((None, None, rows, cols), index_map)


def _q_major(pb, ops, kernel, num_steps, args, sides, out_shape, out_sides, scratch, name):
  """Run a q-major kernel: grid (B, N, q tiles, kv steps).

  args and outputs are [B, heads, L, d] arrays read as [bq, d] tiles of the q tile (side "q"), [bk, d]
  tiles of the kv tile being visited ("kv"), or [r, bq] rows of per-query values of [B, N, r, Tp]
  arrays ("row"). Segment ids are appended to args (q ids [bq, 128] lane-replicated, kv ids [8, bk]).
  """
  bq, bk, g = pb.block_q, pb.block_k, pb.groups
  q_map = lambda b, n, i, t, ranges, *_: (b, n, i, 0)
  kv_map = lambda b, n, i, t, ranges, *_: (b, lax.div(n, g), _clamped(ranges, i, t), 0)  # GQA: n // G
  row_map = lambda b, n, i, t, ranges, *_: (b, n, 0, i)
  block = {"q": lambda x: _block(bq, x.shape[-1], q_map), "kv": lambda x: _block(bk, x.shape[-1], kv_map),
           "row": lambda x: _block(x.shape[2], bq, row_map)}
  in_specs = [block[side](x) for x, side in zip(args, sides)]
  seg_specs = [None, None]
  if pb.has_seg:
    seg_specs = [pl.BlockSpec((None, bq, NUM_LANES), lambda b, n, i, t, *_: (b, i, 0)),
                 pl.BlockSpec((None, NUM_SUBLANES, bk), lambda b, n, i, t, r, *_: (b, 0, _clamped(r, i, t)))]
  b, n, tp, _ = ops.q.shape
  return _call(functools.partial(kernel, pb=pb, num_steps=num_steps), pb,
               (ops.ranges, ops.off, *ops.seg_rng), (b, n, tp // bq, num_steps), in_specs + seg_specs,
               (*args, _as_lanes(ops.q_ids), _as_sublanes(ops.kv_ids)),
               [block[side](x) for x, side in zip(out_shape, out_sides)], out_shape, scratch, name)


def _forward(pb, ops):
  """-> out [B, N, Tp, Hvp], lse [B, N, 8, Tp] (sublane-replicated)."""
  b, n, tp, _ = ops.q.shape
  hvp, f32 = ops.v.shape[-1], jnp.float32
  out_shape = [jax.ShapeDtypeStruct((b, n, tp, hvp), ops.q.dtype),
               jax.ShapeDtypeStruct((b, n, NUM_SUBLANES, tp), f32)]
  scratch = [pltpu.VMEM((pb.block_q, NUM_LANES), f32), pltpu.VMEM((pb.block_q, NUM_LANES), f32),
             pltpu.VMEM((pb.block_q, hvp), f32)]  # m, l, acc
  return _q_major(pb, ops, _fwd_kernel, ops.kv_steps, (ops.q, ops.k, ops.v), ("q", "kv", "kv"), out_shape,
                  ("q", "row"), scratch, "flash_fwd_tpu")


def _backward(pb, ops, do, lse, delta):
  """do [B, N, Tp, Hvp], lse and delta [B, N, 1, Tp] f32 -> dq [B, N, Tp, Hp], dk, dv [B, K, Sp, .]."""
  b, hp = ops.q.shape[0], ops.q.shape[-1]
  kh, sp, hvp = ops.k.shape[1], ops.k.shape[2], ops.v.shape[-1]
  bq, bk, g = pb.block_q, pb.block_k, pb.groups
  f32 = jnp.float32
  dq, = _q_major(pb, ops, _dq_kernel, ops.kv_steps, (ops.q, ops.k, ops.v, do, lse, delta),
                 ("q", "kv", "kv", "q", "row", "row"), [jax.ShapeDtypeStruct(ops.q.shape, ops.q.dtype)], ("q",),
                 [pltpu.VMEM((bq, hp), f32)], "flash_dq_tpu")

  # dK/dV: kv-major grid (B, K, kv tiles, G, q steps); the G query heads of kv head h are n = h * G + g.
  q_map = lambda b_, h, j, g_, t, ranges_t, *_: (b_, h * g + g_, _clamped(ranges_t, j, t), 0)
  row_map = lambda b_, h, j, g_, t, ranges_t, *_: (b_, h * g + g_, 0, _clamped(ranges_t, j, t))
  kv_map = lambda b_, h, j, g_, t, *_: (b_, h, j, 0)
  seg_specs = [None, None]
  if pb.has_seg:
    q_seg_map = lambda b_, h, j, g_, t, ranges_t, *_: (b_, 0, _clamped(ranges_t, j, t))
    seg_specs = [pl.BlockSpec((None, NUM_SUBLANES, bq), q_seg_map),
                 pl.BlockSpec((None, bk, NUM_LANES), lambda b_, h, j, g_, t, *_: (b_, j, 0))]
  dk, dv = _call(
      functools.partial(_dkdv_kernel, pb=pb, num_steps=ops.q_steps), pb,
      (ops.ranges_t, ops.off, *ops.seg_rng), (b, kh, sp // bk, g, ops.q_steps),
      [_block(bq, hp, q_map), _block(bk, hp, kv_map), _block(bk, hvp, kv_map), _block(bq, hvp, q_map),
       _block(1, bq, row_map), _block(1, bq, row_map), *seg_specs],
      (ops.q, ops.k, ops.v, do, lse, delta, _as_sublanes(ops.q_ids), _as_lanes(ops.kv_ids)),
      [_block(bk, hp, kv_map), _block(bk, hvp, kv_map)],
      [jax.ShapeDtypeStruct(ops.k.shape, ops.k.dtype), jax.ShapeDtypeStruct(ops.v.shape, ops.v.dtype)],
      [pltpu.VMEM((bk, hp), f32), pltpu.VMEM((bk, hvp), f32)], "flash_dkdv_tpu")
  return dq, dk, dv


def _from_head_major(x, t, d, dtype):
  """[B, N, Tp, Dp] -> [B, T, N, D]."""
  return x[:, :, :t, :d].transpose(0, 2, 1, 3).astype(dtype)


def _flash_forward(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, interpret=None):
  """attention.flash_vjp's forward: (out [B, T, N, Hv] in q's dtype, lse [B, N, T] float32).

  interpret: None means interpret mode exactly when the default backend is the CPU; False compiles for
  TPU, also when cross-lowering from another host.
  """
  pb = _problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, block_sizes=block_sizes,
                interpret=interpret)
  ops = _operands(pb, q, k, v, segment_ids, kv_segment_ids, q_offset)
  out, lse = _forward(pb, ops)
  t = q.shape[1]
  return _from_head_major(out, t, v.shape[-1], q.dtype), lse[:, :, 0, :t]


def _flash_backward(q, k, v, lse, do, delta, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes,
                    interpret=None):
  """attention.flash_vjp's backward: (dq, dk, dv) from lse and delta [B, N, T], a dQ and a dK/dV kernel."""
  pb = _problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, block_sizes=block_sizes,
                interpret=interpret)
  ops = _operands(pb, q, k, v, segment_ids, kv_segment_ids, q_offset)
  t, s, h, hv = q.shape[1], k.shape[1], q.shape[-1], v.shape[-1]
  tp, hvp = ops.q.shape[2], ops.v.shape[-1]
  do_h = _head_major(do.astype(ops.q.dtype), tp, hvp)  # [B, N, Tp, Hvp]
  rows = lambda x, fill: pad_axis(x.astype(jnp.float32), 2, tp, value=fill)[:, :, None]  # [B, N, 1, Tp]
  dq, dk, dv = _backward(pb, ops, do_h, rows(lse, jnp.inf), rows(delta, 0.0))
  return (_from_head_major(dq, t, h, q.dtype), _from_head_major(dk, s, h, k.dtype),
          _from_head_major(dv, s, hv, v.dtype))


FLASH = make_flash(_flash_forward, _flash_backward)
# The public functions (arguments and results: attention.flash_vjp), plus `interpret` (see _flash_forward).
flash_forward = FLASH.forward
flash_backward = FLASH.backward
flash_attention_with_lse = FLASH.attention_with_lse
flash_attention = FLASH.attention
