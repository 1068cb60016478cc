"""pallas_mgpu's backward kernels: dQ per q tile and dK/dV per kv tile, each a TMA producer and two
consumers like the forward kernel.

dK/dV is summed over the G query heads of a kv head, so GQA never repeats K/V. Both recompute
p = exp2(s - lse2) tile by tile from the saved base-2 log-sum-exp (FlashAttention-2, Algorithm 2).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from attention.mask import walk_tiles
from attention.pallas_mgpu.hw import Hw, per_col, per_row, tile_mask
from attention.pallas_mgpu.pipeline import (PRODUCER, PRODUCER_REGS, consumers, drain, kv_producer, load,
                                            q_tile_program, ranges_of)


def dq_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dq_ref, q_smem,
               do_smem, lse_smem, delta_smem, k_smem, v_smem, qseg_smem, kseg_smem, q_bar, k_bar, v_bar, k_free,
               v_free, *, pb, c):
  """dQ of 2 * block_q rows of one query head: the producer streams K/V tiles, each consumer owns block_q rows."""
  hw = Hw(pb.interpret)
  bq, bk = c.block_q, c.block_k
  prog = q_tile_program(rng_ref, pb.groups, c.num_stages)
  wg, i, b, h, slot = prog.wg, prog.i, prog.b, prog.h, prog.slot
  kv_producer(prog, bk, pb.has_seg, k_ref, v_ref, kseg_ref, k_smem, v_smem, kseg_smem, k_bar, v_bar, k_free, v_free)

  @consumers(wg)
  def _():
    row0 = i * (2 * bq) + wg * bq
    rows = pl.ds(row0, bq)
    qs, dos = q_smem.at[wg], do_smem.at[wg]
    load([(q_ref.at[b, rows, h], qs), (do_ref.at[b, rows, h], dos), (lse_ref.at[b, h, rows], lse_smem.at[wg]),
          (delta_ref.at[b, h, rows], delta_smem.at[wg]),
          (qseg_ref.at[b, rows], qseg_smem.at[wg]) if pb.has_seg else None], q_bar.at[wg])
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
        s = jnp.where(tile_mask(hw, pb.mask, pb.s, q_first, j * bk, shape, q_seg, k_seg), s, -jnp.inf)
      p = jnp.exp2(s - per_row(lse2, shape))
      plgpu.barrier_wait(v_bar.at[slot(j)])
      dp, _ = hw.mma(dos, vs, shape, trans_b=True)
      plgpu.barrier_arrive(v_free.at[slot(j)])
      ds = p * (dp - per_row(delta, shape))
      dq = hw.mma_acc(dq, ds.astype(k_ref.dtype), ks)
      plgpu.barrier_arrive(k_free.at[slot(j)])
      return dq

    dq = walk_tiles(prog.ranges, body, hw.zeros((bq, pb.hp)))
    qs[...] = (dq * pb.scale).astype(qs.dtype)  # Q's buffer is free now
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(qs, dq_ref.at[b, rows, h])
    plgpu.wait_smem_to_gmem(0)


def dkv_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dk_ref,
                dv_ref, k_smem, v_smem, kseg_smem, q_smem, do_smem, lse_smem, delta_smem, qseg_smem, kv_bar,
                q_bar, do_bar, q_free, do_free, *, pb, c):
  """dK, dV of 2 * block_k rows of one kv head, summed over its q tiles and the G query heads reading it.

  Works on transposed tiles s^T = K Q^T [block_k, block_q], so that P^T and dS^T are register operands
  whose rows are the keys this warpgroup owns.
  """
  hw = Hw(pb.interpret)
  bq, bk, st = c.block_q, c.block_k, c.num_stages
  g_size = pb.groups
  wg = lax.axis_index("wg")
  j = lax.axis_index("kv")
  b, kvh = lax.axis_index("b"), lax.axis_index("h")
  start, full_start, full_end, end = ranges_of(rng_ref, b, j)
  count = end - start
  slot = lambda g, i: lax.rem(g * count + i - start, st)

  @pl.when(wg == PRODUCER)
  def _producer():
    plgpu.set_max_registers(PRODUCER_REGS, action="decrease")

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
    drain(jnp.maximum(0, total - st), total, lambda t: (q_free.at[lax.rem(t, st)], do_free.at[lax.rem(t, st)]))

  @consumers(wg)
  def _():
    row0 = j * (2 * bk) + wg * bk
    kvrows = pl.ds(row0, bk)
    ks, vs = k_smem.at[wg], v_smem.at[wg]
    load([(k_ref.at[b, kvrows, kvh], ks), (v_ref.at[b, kvrows, kvh], vs),
          (kseg_ref.at[b, kvrows], kseg_smem.at[wg]) if pb.has_seg else None], kv_bar.at[wg])
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
          vis = tile_mask(hw, pb.mask, pb.s, off + i * bq, row0, shape, q_seg, k_seg, transposed=True)
          st_ = jnp.where(vis, st_, -jnp.inf)
        pt = jnp.exp2(st_ - per_col(hw.layout(lse_smem.at[s][...], hw.COL), shape))
        plgpu.barrier_wait(do_bar.at[s])
        dv = hw.mma_acc(dv, pt.astype(do_ref.dtype), dot_)
        dpt, _ = hw.mma(vs, dot_, shape, trans_b=True)
        dst = pt * (dpt - per_col(hw.layout(delta_smem.at[s][...], hw.COL), shape))
        plgpu.barrier_arrive(do_free.at[s])
        dk = hw.mma_acc(dk, dst.astype(q_ref.dtype), qt)
        plgpu.barrier_arrive(q_free.at[s])
        return dk, dv

      return walk_tiles((start, full_start, full_end, end), body, carry)

    dk, dv = lax.fori_loop(0, g_size, head, (hw.zeros((bk, pb.hp)), hw.zeros((bk, pb.hvp))))
    ks[...] = (dk * pb.scale).astype(ks.dtype)  # K and V's buffers are free now
    vs[...] = dv.astype(vs.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(ks, dk_ref.at[b, kvrows, kvh])
    plgpu.copy_smem_to_gmem(vs, dv_ref.at[b, kvrows, kvh])
    plgpu.wait_smem_to_gmem(0)
