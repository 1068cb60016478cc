"""pallas_mgpu's launches: shared-memory scratch, barriers and grids of the forward, dQ and dK/dV kernels."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

from attention.gpu_flash import Problem
from attention.pallas_mgpu.backward import dkv_kernel, dq_kernel
from attention.pallas_mgpu.forward import forward_kernel
from attention.pallas_mgpu.hw import interpret_arg, smem
from attention.pallas_mgpu.ranges import tile_ranges


def _kernel(body, pb, c, grid, out_type, scratch, name):
  """plgpu.kernel of body over grid (q or kv tiles, B, heads), three warpgroups (two consumers, a producer)."""
  return plgpu.kernel(functools.partial(body, pb=pb, c=c), out_type=out_type, scratch_types=scratch, grid=grid,
                      grid_names=("q" if name != "flash_bwd_dkv" else "kv", "b", "h"), num_threads=3,
                      thread_name="wg", compiler_params=plgpu.CompilerParams(approx_math=True),
                      interpret=interpret_arg(pb.interpret), kernel_name=name)


def forward_call(pb: Problem, q, k, v, static_off, off, q_seg, kv_seg):
  """Padded q [B, Tp, N, Hp], k [B, Sp, K, Hp], v [B, Sp, K, Hvp] -> out [B, Tp, N, Hvp], lse [B, N, Tp]."""
  c = pb.configs.fwd
  b, _, n, _ = q.shape
  bq, bk, st = c.block_q, c.block_k, c.num_stages
  rng = tile_ranges(pb, b, 2 * bq, bk, static_off, q_seg, kv_seg, by_kv=False)
  seg_arrivals = 2 if pb.has_seg else 1
  scratch = [
      smem((2, bq, pb.hp), q.dtype), None if pb.hvp == pb.hp else smem((2, bq, pb.hvp), q.dtype),
      smem((st, bk, pb.hp), k.dtype),
      smem((st, bk, pb.hvp), v.dtype), plgpu.SMEM((2, bq), jnp.float32),
      plgpu.SMEM((2, bq), jnp.int32) if pb.has_seg else None,
      plgpu.SMEM((st, bk), jnp.int32) if pb.has_seg else None,
      plgpu.Barrier(num_arrivals=seg_arrivals, num_barriers=2),
      plgpu.Barrier(num_arrivals=seg_arrivals, num_barriers=st), plgpu.Barrier(num_barriers=st),
      plgpu.Barrier(num_arrivals=2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
      plgpu.Barrier(num_arrivals=2),
  ]

  def body(rng_ref, off_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, q_s, o_s, *rest, pb, c):
    forward_kernel(rng_ref, off_ref, q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, q_s,
                q_s if o_s is None else o_s, *rest, pb=pb, c=c)

  out_type = (jax.ShapeDtypeStruct((b, pb.tp, n, pb.hvp), q.dtype), jax.ShapeDtypeStruct((b, n, pb.tp), jnp.float32))
  call = _kernel(body, pb, c, (pb.tp // (2 * bq), b, n), out_type, scratch, "flash_fwd")
  return call(rng, off, q, k, v, q_seg, kv_seg)


def backward_call(pb: Problem, q, k, v, do, lse2, delta, static_off, off, q_seg, kv_seg):
  """Padded operands, lse2 = lse * log2(e) and delta [B, N, Tp] -> dq, dk, dv (padded, input dtypes)."""
  b, _, n, _ = q.shape
  kh = k.shape[2]
  seg = pb.has_seg
  c = pb.configs.dq
  bq, bk, st = c.block_q, c.block_k, c.num_stages
  scratch = [
      smem((2, bq, pb.hp), q.dtype), smem((2, bq, pb.hvp), do.dtype), plgpu.SMEM((2, bq), jnp.float32),
      plgpu.SMEM((2, bq), jnp.float32), smem((st, bk, pb.hp), k.dtype), smem((st, bk, pb.hvp), v.dtype),
      plgpu.SMEM((2, bq), jnp.int32) if seg else None, plgpu.SMEM((st, bk), jnp.int32) if seg else None,
      plgpu.Barrier(num_arrivals=5 if seg else 4, num_barriers=2),
      plgpu.Barrier(num_arrivals=2 if seg else 1, num_barriers=st), plgpu.Barrier(num_barriers=st),
      plgpu.Barrier(num_arrivals=2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
  ]
  rng = tile_ranges(pb, b, 2 * bq, bk, static_off, q_seg, kv_seg, by_kv=False)
  call = _kernel(dq_kernel, pb, c, (pb.tp // (2 * bq), b, n), jax.ShapeDtypeStruct(q.shape, q.dtype), scratch,
                 "flash_bwd_dq")
  dq = call(rng, off, q, k, v, do, lse2, delta, q_seg, kv_seg)

  c = pb.configs.dkv
  bq, bk, st = c.block_q, c.block_k, c.num_stages
  scratch = [
      smem((2, bk, pb.hp), k.dtype), smem((2, bk, pb.hvp), v.dtype),
      plgpu.SMEM((2, bk), jnp.int32) if seg else None, smem((st, bq, pb.hp), q.dtype),
      smem((st, bq, pb.hvp), do.dtype), plgpu.SMEM((st, bq), jnp.float32), plgpu.SMEM((st, bq), jnp.float32),
      plgpu.SMEM((st, bq), jnp.int32) if seg else None,
      plgpu.Barrier(num_arrivals=3 if seg else 2, num_barriers=2),
      plgpu.Barrier(num_arrivals=3 if seg else 2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
      plgpu.Barrier(num_arrivals=2, num_barriers=st), plgpu.Barrier(num_arrivals=2, num_barriers=st),
  ]
  rng = tile_ranges(pb, b, bq, 2 * bk, static_off, q_seg, kv_seg, by_kv=True)
  out_type = (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype))
  call = _kernel(dkv_kernel, pb, c, (pb.sp // (2 * bk), b, kh), out_type, scratch, "flash_bwd_dkv")
  dk, dv = call(rng, off, q, k, v, do, lse2, delta, q_seg, kv_seg)
  return dq, dk, dv


__all__ = ["backward_call", "forward_call"]
