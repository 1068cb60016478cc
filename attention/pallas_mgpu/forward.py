"""pallas_mgpu's forward kernel: FlashAttention-3's warp-specialised, ping-pong online softmax.

A CTA owns 2 * block_q query rows of one head. The producer streams K/V tiles into the ring
(pipeline.kv_producer); each of the two consumers owns block_q rows and
- runs ping-pong with the other on a two-party schedule barrier, so that one warpgroup's softmax overlaps
  the other's matmuls (FA3 section 3.1);
- multiplies with wgmma: Q and K from shared memory for S = QK^T, P from registers and V from shared
  memory for PV, float32 accumulators in registers;
- keeps the online softmax in registers in base 2 (scale * log2 e folded into one multiply, exp2);
- issues the next tile's QK^T before the current tile's softmax (FA3 section 3.2), so the tensor cores work
  while the exponentials are computed (KernelConfig.pipeline_qk switches this off for measurements).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from attention.mask import walk_tiles
from attention.pallas_mgpu.hw import Hw, per_row, tile_mask
from attention.pallas_mgpu.pipeline import consumers, kv_producer, load, q_tile_program

LN2 = math.log(2.0)


def forward_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, q_smem, o_smem, k_smem,
                v_smem, lse_smem, qseg_smem, kseg_smem, q_bar, k_bar, v_bar, k_free, v_free, sched_bar, *, pb, c):
  """out and lse of 2 * block_q rows of one query head: the producer streams K/V tiles, each consumer owns
  block_q rows and runs the online softmax, ping-pong with the other consumer (module docstring)."""
  hw = Hw(pb.interpret)
  bq, bk = c.block_q, c.block_k
  prog = q_tile_program(rng_ref, pb.groups, c.num_stages)
  wg, i, b, h, slot = prog.wg, prog.i, prog.b, prog.h, prog.slot
  start, _, _, end = prog.ranges
  kv_producer(prog, bk, pb.has_seg, k_ref, v_ref, kseg_ref, k_smem, v_smem, kseg_smem, k_bar, v_bar, k_free, v_free)

  @consumers(wg)
  def _():
    row0 = i * (2 * bq) + wg * bq
    qs = q_smem.at[wg]
    load([(q_ref.at[b, pl.ds(row0, bq), h], qs),
          (qseg_ref.at[b, pl.ds(row0, bq)], qseg_smem.at[wg]) if pb.has_seg else None], q_bar.at[wg])
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
        vis = tile_mask(hw, pb.mask, pb.s, q_first, j * bk, shape, q_seg, k_seg if pb.has_seg else None)
        s = jnp.where(vis, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(axis=1))
      # A row that has seen no key yet keeps m = -inf; subtracting 0 instead avoids inf - inf.
      m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
      p = jnp.exp2(s - per_row(m_use, shape))
      alpha = jnp.exp2(m - m_use)
      l = l * alpha + p.sum(axis=1)
      acc = acc * per_row(alpha, acc.shape)
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
      m, l, acc, s, k_seg = walk_tiles(prog.ranges, step, (m, l, hw.zeros((bq, pb.hvp)), s, k_seg),
                                       last_separately=True)
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
    os[...] = (acc * per_row(1.0 / l_safe, acc.shape)).astype(os.dtype)
    lse_smem.at[wg][...] = jnp.where(seen, m * LN2 + jnp.log(l_safe), jnp.inf)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(os, o_ref.at[b, pl.ds(row0, bq), h])
    plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(row0, bq)])
    plgpu.wait_smem_to_gmem(0)
