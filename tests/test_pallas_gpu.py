"""Pallas GPU FlashAttention kernels: argument errors and lowering for CUDA.

Interpret mode against the reference (every case): tests/test_attention_conformance.py. Interpret mode
checks the arithmetic on the CPU; it does not check what Triton accepts, so every kernel
configuration is also lowered for "cuda" (Triton IR is built at lowering time, so unsupported ops and
bad block shapes fail here without a GPU). Compiled runs on a GPU: benchmarks/gpu_check.sh.
"""

import jax
import jax.numpy as jnp
import pytest

from attention import BlockSizes, Mask, resolve_impl
from attention import pallas_gpu
from attention.testing import random_qkv


def test_bad_arguments():
  q, k, v, _ = random_qkv(10, 1, 32, 32, 2, 1, 16)
  with pytest.raises(ValueError, match="block_q"):
    pallas_gpu.flash_attention(q, k, v, block_sizes=BlockSizes(24, 32), interpret=True)
  with pytest.raises(NotImplementedError, match="300"):
    pallas_gpu.default_configs(300, jnp.bfloat16)
  assert resolve_impl("pallas", None) == ("pallas_gpu", True)  # on the CPU: the GPU kernel, interpreted


LOWERING_CASES = {  # name: (dtype, T, S, N, K, H, Hv, mask, segments, q_offset, block_sizes)
    "bf16-h64-causal": (jnp.bfloat16, 1000, 1537, 4, 2, 64, 64, Mask(causal=True), False, 0, None),
    "bf16-h128-window-segments": (jnp.bfloat16, 512, 512, 4, 2, 128, 128, Mask(causal=True, window=(64, 0)),
                                  True, 0, None),
    "bf16-h256-full-mqa": (jnp.bfloat16, 256, 384, 4, 1, 256, 256, Mask(), False, 0, None),
    "fp16-h128-offsets": (jnp.float16, 64, 512, 4, 4, 128, 128, Mask(causal=True), False, "array", None),
    "f32-h64": (jnp.float32, 256, 256, 2, 1, 64, 64, Mask(causal=True), True, 0, None),
    "f32-h128": (jnp.float32, 256, 256, 2, 1, 128, 128, Mask(window=(32, 32)), False, 0, None),
    "f32-h256": (jnp.float32, 256, 256, 2, 1, 256, 256, Mask(causal=True), False, 0, None),
    "bf16-h96-hv64-padded": (jnp.bfloat16, 300, 300, 6, 2, 96, 64, Mask(causal=True), False, -64, None),
    "bf16-decode-t1": (jnp.bfloat16, 1, 4096, 8, 1, 128, 128, Mask(causal=True), False, 4095, None),
    "bf16-blocks-64x64": (jnp.bfloat16, 512, 512, 4, 2, 128, 128, Mask(causal=True), False, 0, BlockSizes(64, 64)),
}


@pytest.mark.parametrize("name", list(LOWERING_CASES))
def test_lowers_for_cuda(name):
  """Forward, dK/dV and dQ kernels (interpret=False) lower to Triton for CUDA on a CPU-only machine."""
  dtype, t, s, n, kh, h, hv, mask, segments, q_offset, bs = LOWERING_CASES[name]
  sds = jax.ShapeDtypeStruct
  args = [sds((2, t, n, h), dtype), sds((2, s, kh, h), dtype), sds((2, s, kh, hv), dtype)]
  if segments:
    args += [sds((2, t), jnp.int32), sds((2, s), jnp.int32)]
  if q_offset == "array":
    args.append(sds((2,), jnp.int32))

  def loss(q, k, v, *extra):
    kw = dict(mask=mask, block_sizes=bs, interpret=False, q_offset=q_offset)
    if segments:
      kw.update(segment_ids=extra[0], kv_segment_ids=extra[1])
    if q_offset == "array":
      kw["q_offset"] = extra[-1]
    out, lse = pallas_gpu.flash_attention_with_lse(q, k, v, **kw)
    return jnp.sum(out.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse))

  lowered = jax.jit(jax.grad(loss, (0, 1, 2))).trace(*args).lower(lowering_platforms=("cuda",))
  assert lowered.as_text().count("__gpu$xla.gpu.triton") == 3  # fwd, dK/dV, dQ
