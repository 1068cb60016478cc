"""pallas_mgpu's FLASH: the checks and tiles of a call (its Problem) joined to its launches by gpu_flash."""

from __future__ import annotations

import jax.numpy as jnp

from attention.gpu_flash import Problem, gpu_problem, make_gpu_flash
from attention.pallas_mgpu.configs import padded_head_dim, resolve_configs
from attention.pallas_mgpu.launch import backward_call, forward_call

_DTYPES = (jnp.bfloat16, jnp.float16)


def _problem(q, k, v, *, mask, segment_ids, scale, block_sizes, interpret, configs) -> Problem:
  if q.dtype not in _DTYPES:
    raise NotImplementedError(f"pallas_mgpu supports bfloat16 and float16 inputs (wgmma), got {q.dtype}")
  cfg = resolve_configs(padded_head_dim(q.shape[3]), padded_head_dim(v.shape[3]), segment_ids is not None,
                        block_sizes, configs)
  # A CTA owns two consumer tiles; tiles are powers of two, so the largest q (kv) extent of the three kernels
  # is a multiple of the others.
  q_multiple = max(2 * cfg.fwd.block_q, cfg.dkv.block_q, 2 * cfg.dq.block_q)
  kv_multiple = max(cfg.fwd.block_k, 2 * cfg.dkv.block_k, cfg.dq.block_k)
  return gpu_problem(q, k, v, mask=mask, segment_ids=segment_ids, scale=scale, interpret=interpret, configs=cfg,
                     q_multiple=q_multiple, kv_multiple=kv_multiple, padded_head_dim=padded_head_dim)


# configs (a Configs of KernelConfig) overrides the default tiles of all three kernels (benchmarks sweep it);
# block_sizes sets block_q/block_k of the defaults.
FLASH = make_gpu_flash(_problem, forward_call, backward_call, "attention.pallas_mgpu")

__all__ = ["FLASH"]
