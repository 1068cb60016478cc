"""FlashAttention for Hopper (sm_90a) as Pallas Mosaic GPU kernels: TMA, wgmma, warp specialisation.

FlashAttention-3 (Shah et al., arXiv 2407.08608) in Pallas' Mosaic GPU dialect. A CTA owns 2 * block_q query
rows of one head and runs three warpgroups: a producer that only issues TMA copies of K/V tiles into a ring
of `num_stages` shared-memory slots, and two consumers of block_q rows each. The consumers
- run ping-pong on a two-party schedule barrier, so that one warpgroup's softmax overlaps the other's
  matmuls (FA3 section 3.1), and hand registers over from the producer with setmaxnreg;
- multiply on the tensor cores with wgmma: Q and K from shared memory for S = QK^T, P from registers and V
  from shared memory for PV, float32 accumulators in registers;
- keep the online softmax in registers in base 2 (scale * log2 e folded into one multiply, exp2);
- issue the next tile's QK^T before the current tile's softmax (FA3 section 3.2), so the tensor cores work
  while the exponentials are computed (KernelConfig.pipeline_qk switches this off for measurements).
The backward pass is two kernels of the same shape (a TMA producer and two consumers): dK/dV per kv tile
(summed over the G query heads of a kv head, so GQA never repeats K/V) and dQ per q tile.

Every kernel walks exactly the tile ranges of attention.mask.block_map (causal and window masks skip tiles),
narrowed per batch row by the tiles' segment-id ranges; the element-wise rule is mask.element_mask.

Interpret mode (jax._src.pallas.mosaic_gpu.interpret) runs the same kernels on the CPU with its simulated
warpgroups, TMA copies and barriers. It lacks three hardware-only pieces, which `_Hw` replaces by their
mathematical equivalents when interpreting: layout annotations (layout_cast, layout iotas: no CPU rule),
wgmma (its simulation rejects a transposed operand and an operand in registers) and run_state (not
simulated). Everything else (the producer, the barriers, the ring of slots, the block map) is what runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from attention.flash_vjp import make_flash
from attention.mask import BlockSizes, Mask, block_map, element_mask, ranges_overlap, segment_tile_ranges

_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
_DTYPES = (jnp.bfloat16, jnp.float16)
_SMEM_BYTES = 227 * 1024  # Hopper's shared memory per CTA
_CONSUMER_REGS, _PRODUCER_REGS = 232, 40  # 2 * 128 * 232 + 128 * 40 <= 64K registers


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tiles of one kernel: block_q rows per consumer warpgroup, block_kv, shared-memory ring depth.

  pipeline_qk (forward only): issue the next tile's QK^T before the current softmax.
  """

  block_q: int
  block_kv: int
  num_stages: int = 2
  pipeline_qk: bool = True

  def __post_init__(self):
    for name in ("block_q", "block_kv"):
      b = getattr(self, name)
      if not isinstance(b, int) or b < 64 or b & (b - 1):
        raise ValueError(f"pallas_mgpu needs {name} to be a power of two >= 64, got {b!r}")
    if not isinstance(self.num_stages, int) or self.num_stages < 1:
      raise ValueError(f"pallas_mgpu needs num_stages >= 1, got {self.num_stages!r}")


@dataclasses.dataclass(frozen=True)
class Configs:
  """One KernelConfig per kernel: forward, dK/dV and dQ."""

  fwd: KernelConfig
  dkv: KernelConfig
  dq: KernelConfig


# Padded head dim -> Configs, sized by registers (a consumer holds its [block, H] float32 accumulators, two
# in dK/dV, plus one or two [block_q, block_kv] logit tiles) and shared memory (_smem_bytes <= 227 KB).
# Not yet tuned on a GPU: benchmarks/gpu_check.py --sweep times alternatives.
_DEFAULTS = {
    64: Configs(KernelConfig(64, 128, 2), KernelConfig(64, 64, 2), KernelConfig(64, 64, 2)),
    128: Configs(KernelConfig(64, 128, 2), KernelConfig(64, 64, 2), KernelConfig(64, 64, 2)),
    192: Configs(KernelConfig(64, 64, 2), KernelConfig(64, 64, 1), KernelConfig(64, 64, 1)),
    256: Configs(KernelConfig(64, 64, 2), KernelConfig(64, 64, 1), KernelConfig(64, 64, 1)),
}


def padded_head_dim(h: int) -> int:
  """Head dims are zero-padded to a multiple of 64: one 128-byte swizzle row of a 2-byte dtype."""
  if h > 256:
    raise NotImplementedError(f"pallas_mgpu supports head dims up to 256, got {h}")
  return -(-h // 64) * 64


def default_configs(head_dim: int) -> Configs:
  return _DEFAULTS[padded_head_dim(head_dim)]


def _smem_bytes(c: KernelConfig, kernel: str, hp: int, hvp: int, has_seg: bool) -> int:
  """Shared memory one CTA of `kernel` allocates (2-byte tiles; int32 segment ids; float32 rows)."""
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  if kernel == "fwd":
    tiles = 2 * bq * hp + st * bk * (hp + hvp) + (2 * bq * hvp if hvp != hp else 0)
    return 2 * tiles + 4 * 2 * bq + (4 * (2 * bq + st * bk) if has_seg else 0)
  if kernel == "dq":
    return 2 * (2 * bq * (hp + hvp) + st * bk * (hp + hvp)) + 4 * 4 * bq + (4 * (2 * bq + st * bk) if has_seg else 0)
  return 2 * (2 * bk * (hp + hvp) + st * bq * (hp + hvp)) + 4 * 2 * st * bq + (4 * (2 * bk + st * bq) if has_seg else 0)


def _configs(pb_h, pb_hv, block_sizes, config) -> Configs:
  if config is not None:
    if not isinstance(config, Configs):
      raise ValueError(f"pallas_mgpu config must be a pallas_mgpu.Configs, got {config!r}")
    return config
  base = default_configs(max(pb_h, pb_hv))
  if block_sizes is None:
    return base
  rep = lambda c: dataclasses.replace(c, block_q=block_sizes.block_q, block_kv=block_sizes.block_k)
  return Configs(rep(base.fwd), rep(base.dkv), rep(base.dq))


class _Hw:
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


def _rows(x, shape):
  return lax.broadcast_in_dim(x, shape, [0])


def _cols(x, shape):
  return lax.broadcast_in_dim(x, shape, [1])


def _tile_mask(hw, mask, kv_len, q_first, k_first, shape, q_seg, k_seg, *, transposed=False):
  """element_mask of a [rows, cols] tile; rows are queries, or keys when transposed (dK/dV)."""
  qd, kd = (1, 0) if transposed else (0, 1)
  q_pos = hw.iota(shape, qd) + q_first
  k_pos = hw.iota(shape, kd) + k_first
  bcast = _cols if transposed else _rows
  seg_q = None if q_seg is None else (bcast(q_seg, shape))
  seg_k = None if k_seg is None else ((_rows if transposed else _cols)(k_seg, shape))
  return element_mask(mask, q_pos, k_pos, kv_len, seg_q, seg_k)


def _walk(start, full_start, full_end, end, body, carry, *, last_separately=False):
  """body(j, carry, masked) over the masked head, full middle and masked tail of [start, end).

  last_separately: leave the last tile out of the walk (the caller runs it) for software pipelines.
  """
  stop = end - 1 if last_separately else end
  # The transposed map's full range is (0, 0) where a tile has no fully visible partner: clip it into
  # [start, stop], or the tail loop would start at 0 and walk tiles the producer never loads.
  a = jnp.clip(full_start, start, jnp.maximum(stop, start))
  c = jnp.clip(full_end, a, jnp.maximum(stop, a))
  carry = lax.fori_loop(start, a, lambda j, cr: body(j, cr, True), carry)
  carry = lax.fori_loop(a, c, lambda j, cr: body(j, cr, False), carry)
  return lax.fori_loop(c, stop, lambda j, cr: body(j, cr, True), carry)


def _drain(first, stop, barriers):
  """The producer waits for the consumers to free the slots of its last uses [first, stop) before exiting.

  Hardware does not need it (the consumers wait for nothing after), but it leaves every barrier phase
  observed, which the interpreter checks when it frees a barrier.
  """

  @pl.loop(first, stop)
  def _(t):
    for bar in barriers(t):
      plgpu.barrier_wait(bar)


def _ranges_of(rng_ref, b, i):
  return tuple(rng_ref[b, r, i] for r in range(4))


def _fwd_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, q_smem, o_smem, k_smem,
                v_smem, lse_smem, qseg_smem, kseg_smem, q_bar, k_bar, v_bar, k_free, v_free, sched_bar, *, pb, c):
  hw = _Hw(pb.interpret)
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  wg = lax.axis_index("wg")
  i = lax.axis_size("q") - 1 - lax.axis_index("q")  # heaviest (latest) q tiles first under a causal mask
  b, h = lax.axis_index("b"), lax.axis_index("h")
  kvh = lax.div(h, pb.groups)
  start, full_start, full_end, end = _ranges_of(rng_ref, b, i)
  slot = lambda j: lax.rem(j - start, st)

  @pl.when(wg == 2)
  def _producer():
    plgpu.set_max_registers(_PRODUCER_REGS, action="decrease")

    @pl.loop(start, end)
    def _(j):
      s, reuse = slot(j), j - start >= st
      kv = (b, pl.ds(j * bk, bk), kvh)
      pl.when(reuse)(lambda: plgpu.barrier_wait(k_free.at[s]))
      plgpu.copy_gmem_to_smem(k_ref.at[kv], k_smem.at[s], k_bar.at[s])
      if pb.has_seg:
        plgpu.copy_gmem_to_smem(kseg_ref.at[b, pl.ds(j * bk, bk)], kseg_smem.at[s], k_bar.at[s])
      pl.when(reuse)(lambda: plgpu.barrier_wait(v_free.at[s]))
      plgpu.copy_gmem_to_smem(v_ref.at[kv], v_smem.at[s], v_bar.at[s])

    _drain(jnp.maximum(start, end - st), end, lambda j: (k_free.at[slot(j)], v_free.at[slot(j)]))

  @pl.when(wg < 2)
  def _consumer():
    plgpu.set_max_registers(_CONSUMER_REGS, action="increase")
    row0 = i * (2 * bq) + wg * bq
    qs = q_smem.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(row0, bq), h], qs, q_bar.at[wg])
    if pb.has_seg:
      plgpu.copy_gmem_to_smem(qseg_ref.at[b, pl.ds(row0, bq)], qseg_smem.at[wg], q_bar.at[wg])
    plgpu.barrier_wait(q_bar.at[wg])
    q_seg = hw.layout(qseg_smem.at[wg][...], hw.ROW) if pb.has_seg else None
    q_first = off_ref[b] + row0
    shape = (bq, bk)

    def sched():  # the two consumers meet here twice per tile: their softmax phases alternate
      plgpu.barrier_arrive(sched_bar)
      plgpu.barrier_wait(sched_bar)

    def k_seg_of(j):  # read before K's slot is freed: the producer may refill it at once
      return hw.layout(kseg_smem.at[slot(j)][...], hw.COL) if pb.has_seg else jnp.int32(0)

    def qk(j):  # [bq, bk] logits of tile j in base 2 and its kv segment ids; frees K's slot
      s, _ = hw.mma(qs, k_smem.at[slot(j)], shape, trans_b=True)
      k_seg = k_seg_of(j)
      plgpu.barrier_arrive(k_free.at[slot(j)])
      return s * pb.scale2, k_seg

    def softmax_pv(j, s, k_seg, m, l, acc, masked):
      if masked:
        vis = _tile_mask(hw, pb.mask, pb.s, q_first, j * bk, shape, q_seg, k_seg if pb.has_seg else None)
        s = jnp.where(vis, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(axis=1))
      # A row that has seen no key yet keeps m = -inf; subtracting 0 instead avoids inf - inf.
      m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
      p = jnp.exp2(s - _rows(m_use, shape))
      alpha = jnp.exp2(m - m_use)
      l = l * alpha + p.sum(axis=1)
      acc = acc * _rows(alpha, acc.shape)
      p = p.astype(q_ref.dtype)
      plgpu.barrier_wait(v_bar.at[slot(j)])
      sched()
      acc = hw.mma_acc(acc, p, v_smem.at[slot(j)])
      plgpu.barrier_arrive(v_free.at[slot(j)])
      return m_new, l, acc

    def step(j, carry, masked):
      """Softmax and PV of tile j (logits s), with tile j + 1's QK^T issued first."""
      m, l, acc, s, k_seg = carry
      nxt = j + 1
      plgpu.barrier_wait(k_bar.at[slot(nxt)])

      def then():
        sched()
        return softmax_pv(j, s, k_seg, m, l, acc, masked)

      s_next, (m, l, acc) = hw.mma(qs, k_smem.at[slot(nxt)], shape, trans_b=True, then=then,
                                   overlap=c.pipeline_qk)
      k_seg = k_seg_of(nxt)
      plgpu.barrier_arrive(k_free.at[slot(nxt)])
      return m, l, acc, s_next * pb.scale2, k_seg

    def visit():
      m = hw.layout(jnp.full((bq,), -jnp.inf, jnp.float32), hw.ROW)
      l = hw.layout(jnp.zeros((bq,), jnp.float32), hw.ROW)
      plgpu.barrier_wait(k_bar.at[slot(start)])
      s, k_seg = qk(start)
      pl.when(wg == 1)(sched)
      m, l, acc, s, k_seg = _walk(start, full_start, full_end, end, step,
                                  (m, l, hw.zeros((bq, pb.hvp)), s, k_seg), last_separately=True)
      sched()  # where step would issue the next QK^T
      m, l, acc = softmax_pv(end - 1, s, k_seg, m, l, acc, True)
      pl.when(wg == 0)(sched)
      return m, l, acc

    def nothing():
      return (hw.layout(jnp.full((bq,), -jnp.inf, jnp.float32), hw.ROW),
              hw.layout(jnp.zeros((bq,), jnp.float32), hw.ROW), hw.zeros((bq, pb.hvp)))

    m, l, acc = lax.cond(end > start, visit, nothing)
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    os = o_smem.at[wg]
    os[...] = (acc * _rows(1.0 / l_safe, acc.shape)).astype(os.dtype)
    lse_smem.at[wg][...] = jnp.where(seen, m * _LN2 + jnp.log(l_safe), jnp.inf)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(os, o_ref.at[b, pl.ds(row0, bq), h])
    plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(row0, bq)])
    plgpu.wait_smem_to_gmem(0)


def _dq_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dq_ref, q_smem,
               do_smem, lse_smem, delta_smem, k_smem, v_smem, qseg_smem, kseg_smem, q_bar, k_bar, v_bar, k_free,
               v_free, *, pb, c):
  """dQ of 2 * block_q rows of one query head: the producer streams K/V tiles, each consumer owns block_q rows."""
  hw = _Hw(pb.interpret)
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  wg = lax.axis_index("wg")
  i = lax.axis_size("q") - 1 - lax.axis_index("q")
  b, h = lax.axis_index("b"), lax.axis_index("h")
  kvh = lax.div(h, pb.groups)
  start, full_start, full_end, end = _ranges_of(rng_ref, b, i)
  slot = lambda j: lax.rem(j - start, st)

  @pl.when(wg == 2)
  def _producer():
    plgpu.set_max_registers(_PRODUCER_REGS, action="decrease")

    @pl.loop(start, end)
    def _(j):
      s, reuse = slot(j), j - start >= st
      kv = (b, pl.ds(j * bk, bk), kvh)
      pl.when(reuse)(lambda: plgpu.barrier_wait(k_free.at[s]))
      plgpu.copy_gmem_to_smem(k_ref.at[kv], k_smem.at[s], k_bar.at[s])
      if pb.has_seg:
        plgpu.copy_gmem_to_smem(kseg_ref.at[b, pl.ds(j * bk, bk)], kseg_smem.at[s], k_bar.at[s])
      pl.when(reuse)(lambda: plgpu.barrier_wait(v_free.at[s]))
      plgpu.copy_gmem_to_smem(v_ref.at[kv], v_smem.at[s], v_bar.at[s])

    _drain(jnp.maximum(start, end - st), end, lambda j: (k_free.at[slot(j)], v_free.at[slot(j)]))

  @pl.when(wg < 2)
  def _consumer():
    plgpu.set_max_registers(_CONSUMER_REGS, action="increase")
    row0 = i * (2 * bq) + wg * bq
    rows = pl.ds(row0, bq)
    qs, dos = q_smem.at[wg], do_smem.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], qs, q_bar.at[wg])
    plgpu.copy_gmem_to_smem(do_ref.at[b, rows, h], dos, q_bar.at[wg])
    plgpu.copy_gmem_to_smem(lse_ref.at[b, h, rows], lse_smem.at[wg], q_bar.at[wg])
    plgpu.copy_gmem_to_smem(delta_ref.at[b, h, rows], delta_smem.at[wg], q_bar.at[wg])
    if pb.has_seg:
      plgpu.copy_gmem_to_smem(qseg_ref.at[b, rows], qseg_smem.at[wg], q_bar.at[wg])
    plgpu.barrier_wait(q_bar.at[wg])
    q_seg = hw.layout(qseg_smem.at[wg][...], hw.ROW) if pb.has_seg else None
    lse2 = hw.layout(lse_smem.at[wg][...], hw.ROW)  # base 2; +inf for rows that see nothing: p = 0
    delta = hw.layout(delta_smem.at[wg][...], hw.ROW)
    q_first = off_ref[b] + row0
    shape = (bq, bk)

    def body(j, dq, masked):
      ks, vs = k_smem.at[slot(j)], v_smem.at[slot(j)]
      plgpu.barrier_wait(k_bar.at[slot(j)])
      s, _ = hw.mma(qs, ks, shape, trans_b=True)
      s = s * pb.scale2
      if masked:
        k_seg = hw.layout(kseg_smem.at[slot(j)][...], hw.COL) if pb.has_seg else None
        s = jnp.where(_tile_mask(hw, pb.mask, pb.s, q_first, j * bk, shape, q_seg, k_seg), s, -jnp.inf)
      p = jnp.exp2(s - _rows(lse2, shape))
      plgpu.barrier_wait(v_bar.at[slot(j)])
      dp, _ = hw.mma(dos, vs, shape, trans_b=True)
      plgpu.barrier_arrive(v_free.at[slot(j)])
      ds = p * (dp - _rows(delta, shape))
      dq = hw.mma_acc(dq, ds.astype(k_ref.dtype), ks)
      plgpu.barrier_arrive(k_free.at[slot(j)])
      return dq

    dq = _walk(start, full_start, full_end, end, body, hw.zeros((bq, pb.hp)))
    qs[...] = (dq * pb.scale).astype(qs.dtype)  # Q's buffer is free now
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(qs, dq_ref.at[b, rows, h])
    plgpu.wait_smem_to_gmem(0)


def _dkv_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dk_ref,
                dv_ref, k_smem, v_smem, kseg_smem, q_smem, do_smem, lse_smem, delta_smem, qseg_smem, kv_bar,
                q_bar, do_bar, q_free, do_free, *, pb, c):
  """dK, dV of 2 * block_kv rows of one kv head, summed over its q tiles and the G query heads reading it.

  Works on transposed tiles s^T = K Q^T [block_kv, block_q], so that P^T and dS^T are register operands
  whose rows are the keys this warpgroup owns.
  """
  hw = _Hw(pb.interpret)
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  g_size = pb.groups
  wg = lax.axis_index("wg")
  j = lax.axis_index("kv")
  b, kvh = lax.axis_index("b"), lax.axis_index("h")
  start, full_start, full_end, end = _ranges_of(rng_ref, b, j)
  count = end - start
  slot = lambda g, i: lax.rem(g * count + i - start, st)

  @pl.when(wg == 2)
  def _producer():
    plgpu.set_max_registers(_PRODUCER_REGS, action="decrease")

    @pl.loop(0, g_size)
    def _(g):
      h = kvh * g_size + g

      @pl.loop(start, end)
      def _(i):
        s, reuse = slot(g, i), g * count + i - start >= st
        rows = pl.ds(i * bq, bq)
        pl.when(reuse)(lambda: plgpu.barrier_wait(q_free.at[s]))
        plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_smem.at[s], q_bar.at[s])
        plgpu.copy_gmem_to_smem(lse_ref.at[b, h, rows], lse_smem.at[s], q_bar.at[s])
        if pb.has_seg:
          plgpu.copy_gmem_to_smem(qseg_ref.at[b, rows], qseg_smem.at[s], q_bar.at[s])
        pl.when(reuse)(lambda: plgpu.barrier_wait(do_free.at[s]))
        plgpu.copy_gmem_to_smem(do_ref.at[b, rows, h], do_smem.at[s], do_bar.at[s])
        plgpu.copy_gmem_to_smem(delta_ref.at[b, h, rows], delta_smem.at[s], do_bar.at[s])

    total = g_size * count
    _drain(jnp.maximum(0, total - st), total, lambda t: (q_free.at[lax.rem(t, st)], do_free.at[lax.rem(t, st)]))

  @pl.when(wg < 2)
  def _consumer():
    plgpu.set_max_registers(_CONSUMER_REGS, action="increase")
    row0 = j * (2 * bk) + wg * bk
    kvrows = pl.ds(row0, bk)
    ks, vs = k_smem.at[wg], v_smem.at[wg]
    plgpu.copy_gmem_to_smem(k_ref.at[b, kvrows, kvh], ks, kv_bar.at[wg])
    plgpu.copy_gmem_to_smem(v_ref.at[b, kvrows, kvh], vs, kv_bar.at[wg])
    if pb.has_seg:
      plgpu.copy_gmem_to_smem(kseg_ref.at[b, kvrows], kseg_smem.at[wg], kv_bar.at[wg])
    plgpu.barrier_wait(kv_bar.at[wg])
    k_seg = hw.layout(kseg_smem.at[wg][...], hw.ROW) if pb.has_seg else None
    off = off_ref[b]
    shape = (bk, bq)

    def head(g, carry):
      def body(i, carry, masked):
        dk, dv = carry
        s = slot(g, i)
        qt, dot_ = q_smem.at[s], do_smem.at[s]
        plgpu.barrier_wait(q_bar.at[s])
        st_, _ = hw.mma(ks, qt, shape, trans_b=True)
        st_ = st_ * pb.scale2
        if masked:
          q_seg = hw.layout(qseg_smem.at[s][...], hw.COL) if pb.has_seg else None
          vis = _tile_mask(hw, pb.mask, pb.s, off + i * bq, row0, shape, q_seg, k_seg, transposed=True)
          st_ = jnp.where(vis, st_, -jnp.inf)
        pt = jnp.exp2(st_ - _cols(hw.layout(lse_smem.at[s][...], hw.COL), shape))
        plgpu.barrier_wait(do_bar.at[s])
        dv = hw.mma_acc(dv, pt.astype(do_ref.dtype), dot_)
        dpt, _ = hw.mma(vs, dot_, shape, trans_b=True)
        dst = pt * (dpt - _cols(hw.layout(delta_smem.at[s][...], hw.COL), shape))
        plgpu.barrier_arrive(do_free.at[s])
        dk = hw.mma_acc(dk, dst.astype(q_ref.dtype), qt)
        plgpu.barrier_arrive(q_free.at[s])
        return dk, dv

      return _walk(start, full_start, full_end, end, body, carry)

    dk, dv = lax.fori_loop(0, g_size, head, (hw.zeros((bk, pb.hp)), hw.zeros((bk, pb.hvp))))
    ks[...] = (dk * pb.scale).astype(ks.dtype)  # K and V's buffers are free now
    vs[...] = dv.astype(vs.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(ks, dk_ref.at[b, kvrows, kvh])
    plgpu.copy_smem_to_gmem(vs, dv_ref.at[b, kvrows, kvh])
    plgpu.wait_smem_to_gmem(0)


@dataclasses.dataclass(frozen=True)
class _Problem:
  """Static facts of one call: lengths, padded sizes, group size, configs, mask."""

  t: int
  s: int
  tp: int
  sp: int
  groups: int
  hp: int
  hvp: int
  cfg: Configs
  mask: Mask
  scale: float
  has_seg: bool
  interpret: bool

  @property
  def scale2(self) -> float:
    return self.scale * _LOG2E


def _problem(q, k, v, *, mask, segment_ids, scale, block_sizes, config, interpret) -> _Problem:
  if not isinstance(mask, Mask):
    raise ValueError(f"mask must be an attention.Mask, got {mask!r}")
  if q.dtype not in _DTYPES:
    raise NotImplementedError(f"pallas_mgpu supports bfloat16 and float16 inputs (wgmma), got {q.dtype}")
  t, s, h, hv = q.shape[1], k.shape[1], q.shape[3], v.shape[3]
  hp, hvp = padded_head_dim(h), padded_head_dim(hv)
  cfg = _configs(hp, hvp, block_sizes, config)
  for name, c in (("fwd", cfg.fwd), ("dkv", cfg.dkv), ("dq", cfg.dq)):
    used = _smem_bytes(c, name, hp, hvp, segment_ids is not None)
    if used > _SMEM_BYTES:
      raise ValueError(f"pallas_mgpu {name} config {c} needs {used} bytes of shared memory (> {_SMEM_BYTES}) "
                       f"at head dims {hp}/{hvp}; use smaller tiles or fewer stages")
  # Tiles are powers of two, so the largest q (kv) extent of the three kernels is a multiple of the others.
  mq = max(2 * cfg.fwd.block_q, cfg.dkv.block_q, 2 * cfg.dq.block_q)
  mk = max(cfg.fwd.block_kv, 2 * cfg.dkv.block_kv, cfg.dq.block_kv)
  return _Problem(t, s, -(-t // mq) * mq, -(-s // mk) * mk, q.shape[2] // k.shape[2], hp, hvp, cfg, mask,
                  float(scale), segment_ids is not None, bool(interpret))


def _pad_to(x, axis, size, value=0):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _offsets(q_offset, b):
  """Static int (kept for a NumPy block map) or traced int32 [B]; plus the kernels' int32 [B] operand."""
  if isinstance(q_offset, (int, np.integer)) and not isinstance(q_offset, bool):
    return int(q_offset), jnp.full((b,), int(q_offset), jnp.int32)
  off = jnp.broadcast_to(jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1,)), (b,))
  return off, off


def _ranges(pb: _Problem, batch: int, bq: int, bk: int, static_off, q_seg, kv_seg, *, by_kv: bool):
  """int32 [B, 4, n]: (start, full_start, full_end, end) per q tile (per kv tile when by_kv).

  The block map's range, narrowed per batch row to the first and last tile whose segment-id range
  overlaps this tile's (tiles outside cannot hold a visible pair; inside they are masked element-wise).
  """
  bm = block_map(pb.mask, pb.t, pb.s, BlockSizes(bq, bk), has_segments=pb.has_seg, q_offset=static_off)
  rows = (pb.sp // bk) if by_kv else (pb.tp // bq)
  r = _pad_to(jnp.asarray(bm.ranges(kv_major=by_kv)), 1, rows)  # [4, rows]; padded tiles visit nothing
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


def _compiler_params(pb):
  return plgpu.CompilerParams(approx_math=True)


def _interpret_arg(pb):
  if not pb.interpret:
    return False
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # pylint: disable=g-import-not-at-top
  return InterpretGPUParams()


def _smem(shape, dtype, *, swizzled=True):
  """A shared-memory buffer; 2-D 2-byte tiles are stored as wgmma reads them (8 x 64 tiles, 128 B swizzle)."""
  if swizzled:
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)))
  return plgpu.SMEM(shape, dtype)


def _kernel(body, pb, c, grid, out_type, scratch, name):
  return plgpu.kernel(functools.partial(body, pb=pb, c=c), out_type=out_type, scratch_types=scratch, grid=grid,
                      grid_names=("q" if name != "flash_bwd_dkv" else "kv", "b", "h"), num_threads=3,
                      thread_name="wg", compiler_params=_compiler_params(pb), interpret=_interpret_arg(pb),
                      kernel_name=name)


def _forward_call(pb: _Problem, q, k, v, static_off, off, q_seg, kv_seg):
  """Padded q [B, Tp, N, Hp], k [B, Sp, K, Hp], v [B, Sp, K, Hvp] -> out [B, Tp, N, Hvp], lse [B, N, Tp]."""
  c = pb.cfg.fwd
  b, _, n, _ = q.shape
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  rng = _ranges(pb, b, 2 * bq, bk, static_off, q_seg, kv_seg, by_kv=False)
  seg_arrivals = 2 if pb.has_seg else 1
  scratch = [
      _smem((2, bq, pb.hp), q.dtype), None if pb.hvp == pb.hp else _smem((2, bq, pb.hvp), q.dtype), _smem((st, bk, pb.hp), k.dtype),
      _smem((st, bk, pb.hvp), v.dtype), plgpu.SMEM((2, bq), jnp.float32),
      plgpu.SMEM((2, bq), jnp.int32) if pb.has_seg else None,
      plgpu.SMEM((st, bk), jnp.int32) if pb.has_seg else None,
      plgpu.Barrier(num_arrivals=seg_arrivals, num_barriers=2),
      plgpu.Barrier(num_arrivals=seg_arrivals, num_barriers=st), plgpu.Barrier(num_barriers=st),
      plgpu.Barrier(num_arrivals=2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
      plgpu.Barrier(num_arrivals=2),
  ]

  def body(rng_ref, off_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, q_s, o_s, *rest, pb, c):
    _fwd_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, q_s,
                q_s if o_s is None else o_s, *rest, pb=pb, c=c)

  out_type = (jax.ShapeDtypeStruct((b, pb.tp, n, pb.hvp), q.dtype), jax.ShapeDtypeStruct((b, n, pb.tp), jnp.float32))
  call = _kernel(body, pb, c, (pb.tp // (2 * bq), b, n), out_type, scratch, "flash_fwd")
  return call(rng, off, q, k, v, q_seg, kv_seg)


def _backward_call(pb: _Problem, q, k, v, do, lse2, delta, static_off, off, q_seg, kv_seg):
  """Padded operands, lse2 = lse * log2(e) and delta [B, N, Tp] -> dq, dk, dv (padded, input dtypes)."""
  b, _, n, _ = q.shape
  kh = k.shape[2]
  seg = pb.has_seg
  c = pb.cfg.dq
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  scratch = [
      _smem((2, bq, pb.hp), q.dtype), _smem((2, bq, pb.hvp), do.dtype), plgpu.SMEM((2, bq), jnp.float32),
      plgpu.SMEM((2, bq), jnp.float32), _smem((st, bk, pb.hp), k.dtype), _smem((st, bk, pb.hvp), v.dtype),
      plgpu.SMEM((2, bq), jnp.int32) if seg else None, plgpu.SMEM((st, bk), jnp.int32) if seg else None,
      plgpu.Barrier(num_arrivals=5 if seg else 4, num_barriers=2),
      plgpu.Barrier(num_arrivals=2 if seg else 1, num_barriers=st), plgpu.Barrier(num_barriers=st),
      plgpu.Barrier(num_arrivals=2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
  ]
  rng = _ranges(pb, b, 2 * bq, bk, static_off, q_seg, kv_seg, by_kv=False)
  call = _kernel(_dq_kernel, pb, c, (pb.tp // (2 * bq), b, n), jax.ShapeDtypeStruct(q.shape, q.dtype), scratch,
                 "flash_bwd_dq")
  dq = call(rng, off, q, k, v, do, lse2, delta, q_seg, kv_seg)

  c = pb.cfg.dkv
  bq, bk, st = c.block_q, c.block_kv, c.num_stages
  scratch = [
      _smem((2, bk, pb.hp), k.dtype), _smem((2, bk, pb.hvp), v.dtype),
      plgpu.SMEM((2, bk), jnp.int32) if seg else None, _smem((st, bq, pb.hp), q.dtype),
      _smem((st, bq, pb.hvp), do.dtype), plgpu.SMEM((st, bq), jnp.float32), plgpu.SMEM((st, bq), jnp.float32),
      plgpu.SMEM((st, bq), jnp.int32) if seg else None,
      plgpu.Barrier(num_arrivals=3 if seg else 2, num_barriers=2),
      plgpu.Barrier(num_arrivals=3 if seg else 2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
      plgpu.Barrier(num_arrivals=2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
  ]
  rng = _ranges(pb, b, bq, 2 * bk, static_off, q_seg, kv_seg, by_kv=True)
  out_type = (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype))
  call = _kernel(_dkv_kernel, pb, c, (pb.sp // (2 * bk), b, kh), out_type, scratch, "flash_bwd_dkv")
  dk, dv = call(rng, off, q, k, v, do, lse2, delta, q_seg, kv_seg)
  return dq, dk, dv


def _pad_qkv(pb: _Problem, q, k, v):
  q = _pad_to(_pad_to(q, 1, pb.tp), 3, pb.hp)  # zero head-dim padding leaves q.k unchanged
  k = _pad_to(_pad_to(k, 1, pb.sp), 3, pb.hp)
  v = _pad_to(_pad_to(v, 1, pb.sp), 3, pb.hvp)  # zero v columns give zero output columns, sliced off
  return q, k, v


def _seg_operands(pb: _Problem, segment_ids, kv_segment_ids):
  if segment_ids is None:
    return None, None
  # Padded rows get an id no real row has... but the kv_len mask already hides padded keys, and padded
  # query rows are sliced off, so zero padding is enough.
  return (_pad_to(jnp.asarray(segment_ids, jnp.int32), 1, pb.tp),
          _pad_to(jnp.asarray(kv_segment_ids, jnp.int32), 1, pb.sp))


def forward(q, k, v, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes, interpret=False,
            config=None):
  """(out [B, T, N, Hv] in q's dtype, lse [B, N, T] float32, +inf where a row sees no key).

  The attention.flash_vjp forward contract; config (a Configs) overrides the default tiles for all three
  kernels (benchmarks sweep it), block_sizes sets block_q/block_kv of the defaults.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  pb = _problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, block_sizes=block_sizes, config=config,
                interpret=interpret)
  static_off, off = _offsets(q_offset, q.shape[0])
  q_seg, kv_seg = _seg_operands(pb, segment_ids, segment_ids if kv_segment_ids is None else kv_segment_ids)
  out, lse = _forward_call(pb, *_pad_qkv(pb, q, k, v), static_off, off, q_seg, kv_seg)
  return out[:, :pb.t, :, :v.shape[3]], lse[:, :, :pb.t]


def backward(q, k, v, lse, do, delta, *, mask, segment_ids, kv_segment_ids, q_offset, scale, block_sizes,
             interpret=False, config=None):
  """(dq, dk, dv) from lse [B, N, T] and delta [B, N, T] = rowsum(dO * O) - dlse; the flash_vjp contract."""
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  pb = _problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, block_sizes=block_sizes, config=config,
                interpret=interpret)
  static_off, off = _offsets(q_offset, q.shape[0])
  q_seg, kv_seg = _seg_operands(pb, segment_ids, segment_ids if kv_segment_ids is None else kv_segment_ids)
  lse2 = _pad_to(lse.astype(jnp.float32) * _LOG2E, 2, pb.tp, jnp.inf)  # padded rows: p = exp2(-inf) = 0
  delta = _pad_to(delta.astype(jnp.float32), 2, pb.tp)
  qp, kp, vp = _pad_qkv(pb, q, k, v)
  dop = _pad_to(_pad_to(do.astype(q.dtype), 1, pb.tp), 3, pb.hvp)
  dq, dk, dv = _backward_call(pb, qp, kp, vp, dop, lse2, delta, static_off, off, q_seg, kv_seg)
  return dq[:, :pb.t, :, :q.shape[3]], dk[:, :pb.s, :, :k.shape[3]], dv[:, :pb.s, :, :v.shape[3]]


FLASH = make_flash(forward, backward)
# The public functions (arguments and results: attention.flash_vjp), plus `interpret` and `config`.
flash_forward = FLASH.forward
flash_backward = FLASH.backward
flash_attention_with_lse = FLASH.attention_with_lse
flash_attention = FLASH.attention
