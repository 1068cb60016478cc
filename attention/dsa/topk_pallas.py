"""Top-k key selection as Pallas kernels: indexer scoring and a radix select (GPU: Triton, TPU: Mosaic).

DeepSeek-V3.2-Exp picks each query's top_k keys with a radix-select top-k over its indexer scores
(TileLang's topk_selector) instead of a sort. Here, for each chunk of C queries (so nothing is [B, T, S]):

1. score kernel, grid (B, C / bq, S / bk): one [bq, bk] tile of score = sum_j w_j relu(q_j . k), one
   indexer head j at a time ([bq, Di] x [Di, bk] dots, float32 accumulation), the element mask applied;
   a tile outside the block map's visible range is filled with -inf and costs no compute. Output: the
   chunk's float32 scores [B, C, S] in HBM, O(C * S).
2. XLA: each score becomes an int32 key whose signed order is the float order (negative floats flip
   their magnitude bits; -0.0 becomes +0.0 first, as the two compare equal); masked keys get INT32_MIN.
3. threshold kernel, grid (B, C / 8): 8 passes of 4 bits over the row block's tiles. With the high bits
   of tau fixed, a pass counts the keys >= each of the 15 candidates for the next digit and keeps the
   largest candidate that still has >= K keys above it (K = min(top_k, visible keys)), so tau ends as the
   K-th largest key, with the count of keys > tau on the side: the m = K - count ties at tau that are kept
   are the ones with the lowest indices.
4. XLA: compaction of the K survivors into [B, C, top_k] with an exclusive cumsum and a scatter (O(C*S);
   Mosaic has no vector scatter, so both backends compact here), then a stable sort of those K keys
   (O(C * top_k log top_k)): best first, ties towards the lower key index, -1 past the visible keys.

Scores match the "xla" selector's up to float32 summation order (this kernel sums heads one by one).
score_dtype float8_e4m3fn quantizes rows as attention.dsa.indexer does and feeds the dots the quantized
values as bfloat16, which holds every e4m3 value exactly, so the products are the FP8 products (no FP8
matmul unit is needed; on Hopper a native FP8 dot would be faster).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from attention.dsa.indexer import quantize_rows
from attention.dsa.rows import chunk_len, chunk_rows, unchunk_rows
from attention.kernel_utils import pad_axis
from attention.mask import BlockSizes, block_map, element_mask
from attention.reference import positions

_MIN = np.int32(np.iinfo(np.int32).min)
_DIGIT_BITS = 4
_DIGITS = 1 << _DIGIT_BITS


def sortable_keys(score, visible):
  """float32 score -> int32 key with the same (signed) order; INT32_MIN where not visible."""
  score = jnp.where(score == 0, 0.0, score)  # -0.0 == +0.0 as floats: one key for both
  bits = lax.bitcast_convert_type(score, jnp.int32)
  key = jnp.where(bits >= 0, bits, bits ^ np.int32(0x7FFFFFFF))  # negatives: larger magnitude, smaller key
  return jnp.where(visible, key, _MIN)


# ----------------------------------------------------------------------------------------------------------
# Kernel bodies, shared by both backends.


def _score_kernel(ranges_ref, q_ref, w_ref, k_ref, ks_ref, qpos_ref, *rest, mask, kv_len, bk, num_q_blocks,
                  heads, precision, has_segments):
  """One [bq, bk] score tile: sum over indexer heads of w * relu(q . k), masked; -inf off the block map."""
  if has_segments:
    qseg_ref, kseg_ref, out_ref = rest
  else:
    (out_ref,) = rest
  i, j = pl.program_id(1), pl.program_id(2)
  visit = (j >= ranges_ref[i]) & (j < ranges_ref[num_q_blocks + i])

  @pl.when(visit)
  def _():
    kt = k_ref[...]  # [bk, Dp]

    def head(h, acc):  # acc [bq, bk]
      s = lax.dot_general(q_ref[h], kt, (((1,), (1,)), ((), ())), precision=precision,
                          preferred_element_type=jnp.float32)  # [bq, bk]
      return acc + w_ref[h] * jnp.maximum(s, 0.0)  # w_ref[h]: [bq, 1]

    acc = lax.fori_loop(0, heads, head, jnp.zeros(out_ref.shape, jnp.float32))
    k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)  # [1, bk]
    q_seg, k_seg = (qseg_ref[...], kseg_ref[...]) if has_segments else (None, None)  # [bq, 1], [1, bk]
    visible = element_mask(mask, qpos_ref[...], k_pos, kv_len, q_seg, k_seg)  # [bq, bk]
    out_ref[...] = jnp.where(visible, acc * ks_ref[...], -jnp.inf)

  @pl.when(jnp.logical_not(visit))
  def _():
    out_ref[...] = jnp.full(out_ref.shape, -jnp.inf, jnp.float32)


def _radix_threshold(load_tile, num_tiles: int, bq: int, top_k: int):
  """(tau [bq, 1], m [bq, 1]) int32: the K-th largest key of each row and how many keys == tau to keep.

  load_tile(t) -> [bq, bk] int32 keys of tile t. Prefixes are held as unsigned bit patterns in int32; an
  unsigned u >= c is the signed comparison key >= (c ^ INT32_MIN).
  """

  def one_pass(p, carry):
    prefix, above, want = carry  # [bq, 1]: high digits of tau, count of keys >= prefix + 2^shift, K
    shift = 32 - _DIGIT_BITS * (p + 1)
    # Candidate d (1..15) for this digit; slot 0 counts the visible keys (u >= 1) in the first pass.
    cands = [(prefix | lax.shift_left(jnp.int32(d), shift)) ^ _MIN for d in range(_DIGITS)]
    cands[0] = jnp.where(p == 0, _MIN + 1, cands[0])

    def tile(t, counts):
      x = load_tile(t)  # [bq, bk]
      return tuple(c + jnp.sum(jnp.where(x >= cd, 1.0, 0.0), axis=1, keepdims=True)
                   for c, cd in zip(counts, cands))

    counts = lax.fori_loop(0, num_tiles, tile, (jnp.zeros((bq, 1), jnp.float32),) * _DIGITS)
    want = jnp.where(p == 0, jnp.minimum(counts[0], float(top_k)), want)
    # counts[d] does not grow with d, so the digit is the number of candidates still holding >= K keys.
    digit = sum(jnp.where(c >= want, 1, 0) for c in counts[1:]).astype(jnp.int32)  # [bq, 1]
    nxt = sum(jnp.where(digit + 1 == d, c, 0.0) for d, c in enumerate(counts) if d > 0)
    above = jnp.where(digit < _DIGITS - 1, nxt, above)
    return prefix | lax.shift_left(digit, shift), above, want

  init = (jnp.zeros((bq, 1), jnp.int32), jnp.zeros((bq, 1), jnp.float32), jnp.zeros((bq, 1), jnp.float32))
  prefix, above, want = lax.fori_loop(0, 32 // _DIGIT_BITS, one_pass, init)
  return prefix ^ _MIN, (want - above).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------
# The pipeline around the kernels (per chunk of queries).


def _compact(keys, tau, ties, top_k: int):
  """keys [B, C, S] int32, tau / ties [B, C, 1] -> int32 [B, C, top_k]: the survivors, best first."""
  b, c, s = keys.shape
  tie = keys == tau
  tie_rank = jnp.cumsum(tie, axis=-1, dtype=jnp.int32) - tie  # ties at tau before this key
  sel = (keys > tau) | (tie & (tie_rank < ties))
  slot = jnp.where(sel, jnp.cumsum(sel, axis=-1, dtype=jnp.int32) - 1, top_k)  # top_k: dropped
  bi = jnp.arange(b)[:, None, None]
  ci = jnp.arange(c)[None, :, None]
  key_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), keys.shape)
  idx = jnp.full((b, c, top_k + 1), -1, jnp.int32).at[bi, ci, slot].set(key_pos)[..., :top_k]
  val = jnp.full((b, c, top_k + 1), _MIN, jnp.int32).at[bi, ci, slot].set(keys)[..., :top_k]
  # Survivors are in key order, so a stable sort on the negated key breaks ties towards the lower index.
  _, idx = lax.sort((~val, idx), dimension=-1, num_keys=1, is_stable=True)
  return idx


def _operands(q_idx, k_idx, w, score_dtype, lane: int):
  """Kernel operands: q [B, Hi, T, Dp], w [B, Hi, T, 1] f32, k [B, S, Dp], k scales [B, 1, S] f32."""
  dt = jnp.dtype(score_dtype)
  w = w.astype(jnp.float32)
  k_scale = jnp.ones(k_idx.shape[:2], jnp.float32)
  if dt == jnp.float8_e4m3fn:  # as attention.dsa.indexer: the q scale folds into w, the k scale after
    q_idx, q_scale = quantize_rows(q_idx, dt)
    k_idx, k_scale = quantize_rows(k_idx, dt)
    w = w * q_scale
    dt = jnp.dtype(jnp.bfloat16)  # holds every float8_e4m3fn value exactly
  dp = -(-q_idx.shape[-1] // lane) * lane
  q = pad_axis(jnp.transpose(q_idx.astype(dt), (0, 2, 1, 3)), 3, dp)
  return (q, jnp.transpose(w, (0, 2, 1))[..., None], pad_axis(k_idx.astype(dt), 2, dp), k_scale[:, None, :],
          lax.Precision.HIGHEST if dt == jnp.float32 else None)


def topk_pallas(q_idx, k_idx, w, *, top_k, mask, segment_ids, kv_segment_ids, q_offset, score_dtype, chunk_size,
                backend, interpret):
  """Shared driver: per chunk of queries, the score kernel, sortable keys, the threshold kernel, compaction.

  backend: the _Backend of the target (block sizes, lane padding and the two pallas_call builders).
  """
  b, t, hi, _ = q_idx.shape
  kv_len = k_idx.shape[1]
  bq, bk = backend.block_q, backend.block_k
  q, wt, k, k_scale, precision = _operands(q_idx, k_idx, w, score_dtype, backend.lane)
  sp = -(-kv_len // bk) * bk
  k, k_scale = pad_axis(k, 1, sp), pad_axis(k_scale, 2, sp)
  # The chunk holds [C, S] scores, keys and cumsum / scatter temporaries (about 6 arrays); the budget counts
  # two, so chunks stay long enough to give the threshold kernel C / 8 programs.
  c = chunk_size or chunk_len(t, 2 * b * sp)
  c = -(-min(c, t) // bq) * bq
  nc, nqb = -(-t // c), c // bq
  bm = block_map(mask, t, kv_len, BlockSizes(bq, bk), has_segments=segment_ids is not None, q_offset=q_offset)
  starts = pad_axis(jnp.asarray(bm.kv_start, jnp.int32), 0, nc * nqb).reshape(nc, nqb)
  ends = pad_axis(jnp.asarray(bm.kv_end, jnp.int32), 0, nc * nqb).reshape(nc, nqb)
  qpos = jnp.broadcast_to(positions(t, q_offset), (b, t))[..., None]  # [B, T, 1]
  kseg = None if segment_ids is None else pad_axis(kv_segment_ids, 1, sp, -1)[:, None, :]  # [B, 1, Sp]
  qseg = None if segment_ids is None else segment_ids[..., None]
  score_call = backend.score_call(b, c, sp, hi, q.shape[-1], mask=mask, kv_len=kv_len, precision=precision,
                                  has_segments=segment_ids is not None, interpret=interpret)
  threshold_call = backend.threshold_call(b, c, sp, top_k=top_k, interpret=interpret)
  chunk_q = lambda x: chunk_rows(jnp.moveaxis(x, 2, 1), c, nc)  # [B, Hi, T, .] -> [nc, B, C, Hi, .]

  def one_chunk(args):
    ranges, qc, wc, posc, segc = args
    qc, wc = jnp.moveaxis(qc, 2, 1), jnp.moveaxis(wc, 2, 1)  # [B, Hi, C, .]
    operands = (ranges, qc, wc, k, k_scale, posc) + (() if segc is None else (segc, kseg))
    score = score_call(*operands)  # [B, C, Sp] f32
    keys = sortable_keys(score, score > -jnp.inf)
    tau, ties = threshold_call(keys)  # [B, C, 1] each
    return _compact(keys, tau, ties, top_k)

  ranges = jnp.concatenate([starts, ends], axis=1)  # [nc, 2 * nqb]
  out = lax.map(one_chunk, (ranges, chunk_q(q), chunk_q(wt), chunk_rows(qpos, c, nc), chunk_rows(qseg, c, nc)))
  return unchunk_rows(out, t)  # [B, T, top_k]


# ----------------------------------------------------------------------------------------------------------
# Backends: block sizes, padding, and the pallas_call of each kernel.


def _score_specs(hi, bq, bk, dp, has_segments, k_block):
  """BlockSpecs of the score kernel over grid (b, i, j, *prefetch): k_block(i, j, *prefetch) picks k's block."""
  specs = [pl.BlockSpec((None, hi, bq, dp), lambda b, i, j, *r: (b, 0, i, 0)),  # q [Hi, bq, Dp]
           pl.BlockSpec((None, hi, bq, 1), lambda b, i, j, *r: (b, 0, i, 0)),  # w [Hi, bq, 1]
           pl.BlockSpec((None, bk, dp), lambda b, i, j, *r: (b, k_block(i, j, *r), 0)),  # k [bk, Dp]
           pl.BlockSpec((None, 1, bk), lambda b, i, j, *r: (b, 0, k_block(i, j, *r))),  # k scales [1, bk]
           pl.BlockSpec((None, bq, 1), lambda b, i, j, *r: (b, i, 0))]  # query positions [bq, 1]
  if has_segments:
    specs += [pl.BlockSpec((None, bq, 1), lambda b, i, j, *r: (b, i, 0)),
              pl.BlockSpec((None, 1, bk), lambda b, i, j, *r: (b, 0, k_block(i, j, *r)))]
  return specs


class _GPU:
  """Triton: power-of-two tiles of at least 16 for tl.dot; a program per tile / per row block of 8."""

  block_q, block_k, lane, threshold_rows = 32, 64, 16, 8

  def __init__(self, num_warps: int = 4):
    self.num_warps = num_warps

  def _params(self):
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=self.num_warps, num_stages=2)

  def score_call(self, b, c, sp, hi, dp, *, mask, kv_len, precision, has_segments, interpret):
    bq, bk = self.block_q, self.block_k
    nqb = c // bq
    nr = 1 << (2 * nqb - 1).bit_length()  # the range list padded to a power of two for Triton
    kernel = functools.partial(_score_kernel, mask=mask, kv_len=kv_len, bk=bk, num_q_blocks=nqb, heads=hi,
                               precision=precision, has_segments=has_segments)
    call = pl.pallas_call(
        kernel, grid=(b, nqb, sp // bk),
        in_specs=[pl.BlockSpec((nr,), lambda b, i, j: (0,))] +
        _score_specs(hi, bq, bk, dp, has_segments, lambda i, j: j),
        out_specs=pl.BlockSpec((None, bq, bk), lambda b, i, j: (b, i, j)),
        out_shape=jax.ShapeDtypeStruct((b, c, sp), jnp.float32),
        compiler_params=self._params(), interpret=interpret, name="dsa_topk_score")
    return lambda ranges, *ops: call(pad_axis(ranges, 0, nr), *ops)

  def threshold_call(self, b, c, sp, *, top_k, interpret):
    bq, bk = self.threshold_rows, self.block_k

    def kernel(keys_ref, tau_ref, ties_ref):
      load = lambda t: keys_ref[:, pl.ds(pl.multiple_of(t * bk, bk), bk)]  # [bq, bk]
      tau_ref[...], ties_ref[...] = _radix_threshold(load, sp // bk, bq, top_k)

    vec = pl.BlockSpec((None, bq, 1), lambda b, i: (b, i, 0))
    return pl.pallas_call(
        kernel, grid=(b, c // bq), in_specs=[pl.BlockSpec((None, bq, sp), lambda b, i: (b, i, 0))],
        out_specs=[vec, vec], out_shape=[jax.ShapeDtypeStruct((b, c, 1), jnp.int32)] * 2,
        compiler_params=self._params(), interpret=interpret, name="dsa_topk_threshold")


class _TPU:
  """Mosaic: lane-dense tiles (128), the visible block range scalar-prefetched into SMEM; k blocks outside
  it are not fetched (their index is clamped into the range). The threshold kernel streams key tiles from
  HBM with DMAs, so any S fits."""

  block_q, block_k, lane, threshold_rows = 32, 128, 128, 8

  @staticmethod
  def _interpret(interpret):
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.InterpretParams() if interpret else False

  def score_call(self, b, c, sp, hi, dp, *, mask, kv_len, precision, has_segments, interpret):
    from jax.experimental.pallas import tpu as pltpu
    bq, bk = self.block_q, self.block_k
    nqb = c // bq
    kernel = functools.partial(_score_kernel, mask=mask, kv_len=kv_len, bk=bk, num_q_blocks=nqb, heads=hi,
                               precision=precision, has_segments=has_segments)
    k_block = lambda i, j, r: jnp.clip(j, r[i], jnp.maximum(r[nqb + i] - 1, r[i]))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(b, nqb, sp // bk),
        in_specs=_score_specs(hi, bq, bk, dp, has_segments, k_block),
        out_specs=pl.BlockSpec((None, bq, bk), lambda b, i, j, r: (b, i, j)))
    return pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct((b, c, sp), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=self._interpret(interpret), name="dsa_topk_score_tpu")

  def threshold_call(self, b, c, sp, *, top_k, interpret):
    from jax.experimental.pallas import tpu as pltpu
    bq, bk = self.threshold_rows, self.block_k

    def kernel(keys_hbm, tau_ref, ties_ref, buf, sem):
      row = pl.multiple_of(pl.program_id(1) * bq, bq)

      def load(t):
        src = keys_hbm.at[pl.program_id(0), pl.ds(row, bq), pl.ds(pl.multiple_of(t * bk, bk), bk)]
        copy = pltpu.make_async_copy(src, buf, sem)
        copy.start()
        copy.wait()
        return buf[...]  # [bq, bk]

      tau_ref[...], ties_ref[...] = _radix_threshold(load, sp // bk, bq, top_k)

    vec = pl.BlockSpec((None, bq, 1), lambda b, i: (b, i, 0))
    return pl.pallas_call(
        kernel, grid=(b, c // bq), in_specs=[pl.BlockSpec(memory_space=pl.ANY)], out_specs=[vec, vec],
        out_shape=[jax.ShapeDtypeStruct((b, c, 1), jnp.int32)] * 2,
        scratch_shapes=[pltpu.VMEM((bq, bk), jnp.int32), pltpu.SemaphoreType.DMA(())],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=self._interpret(interpret), name="dsa_topk_threshold_tpu")


def topk_pallas_gpu(q_idx, k_idx, w, *, interpret, **kw):
  """Registry entry "pallas_gpu" (Triton): the signature of attention.dsa.TOPK_REGISTRY's fns."""
  return topk_pallas(q_idx, k_idx, w, backend=_GPU(), interpret=bool(interpret), **kw)


def topk_pallas_tpu(q_idx, k_idx, w, *, interpret, **kw):
  """Registry entry "pallas_tpu" (Mosaic): the signature of attention.dsa.TOPK_REGISTRY's fns."""
  return topk_pallas(q_idx, k_idx, w, backend=_TPU(), interpret=bool(interpret), **kw)
