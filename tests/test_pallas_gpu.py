"""Pallas GPU FlashAttention kernels: interpret mode against the reference, and lowering for CUDA.

Interpret mode checks the arithmetic on the CPU; it does not check what Triton accepts, so every kernel
configuration is also lowered for "cuda" (Triton IR is built at lowering time, so unsupported ops and
bad block shapes fail here without a GPU). Compiled runs on a GPU: benchmarks/gpu_check.sh.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import BlockSizes, Mask, reference, resolve_impl
from attention import pallas_gpu
from attention_testing import assert_matches_reference, fwd_and_grads, random_qkv, rel_err

BS = BlockSizes(16, 32)  # small tiles: short inputs span many tiles, with partial tail tiles


@pytest.mark.parametrize("mask", [
    Mask(), Mask(causal=True), Mask(window=(20, 0)), Mask(window=(9, 13)), Mask(causal=True, window=(33, 0))],
    ids=str)
def test_masks_gqa(mask):
  q, k, v, ct = random_qkv(0, 1, 100, 100, 4, 2, 16)
  assert_matches_reference("pallas_gpu", q, k, v, ct, mask=mask, block_sizes=BS)


@pytest.mark.parametrize("t,s,mask", [(70, 130, Mask(causal=True)), (130, 70, Mask())])
def test_mqa_t_differs_from_s(t, s, mask):
  q, k, v, ct = random_qkv(1, 1, t, s, 4, 1, 16)
  assert_matches_reference("pallas_gpu", q, k, v, ct, mask=mask, block_sizes=BS)


def test_segments_skip_tiles_and_empty_rows_are_zero():
  q, k, v, ct = random_qkv(2, 2, 96, 96, 2, 1, 16)
  seg = jnp.repeat((jnp.arange(96) // 24)[None], 2, 0).astype(jnp.int32)  # 4 documents per row
  kv_seg = jnp.where(seg == 3, 2, seg)  # query document 3 has no keys: its rows see nothing
  kw = dict(mask=Mask(window=(30, 30)), segment_ids=seg, kv_segment_ids=kv_seg, block_sizes=BS)
  assert_matches_reference("pallas_gpu", q, k, v, ct, **kw)
  out, grads = fwd_and_grads("pallas_gpu", q, k, v, ct, **kw)
  assert np.all(np.asarray(out)[:, 72:] == 0)
  assert np.all(np.asarray(grads[0])[:, 72:] == 0)


def test_per_row_q_offsets():
  q, k, v, ct = random_qkv(3, 3, 5, 200, 4, 4, 16)
  off = jnp.array([0, 100, 195], jnp.int32)
  assert_matches_reference("pallas_gpu", q, k, v, ct, mask=Mask(causal=True, window=(64, 0)), q_offset=off,
                           block_sizes=BS)


def test_negative_q_offset_forward_and_lse():
  """Ring attention shifts query positions below zero; rows before every key get lse = +inf, out = 0."""
  q, k, v, _ = random_qkv(4, 1, 64, 96, 2, 1, 16)
  mask = Mask(causal=True)
  out, lse = pallas_gpu.flash_forward(q, k, v, mask=mask, q_offset=-40, block_sizes=BS, interpret=True)
  visible = reference.dense_mask(mask, 64, 96, q_offset=-40)
  ref_out, ref_lse = reference.attention_with_lse(q, k, v, visible, 16 ** -0.5)
  assert rel_err(out, ref_out) < 1e-5
  assert np.array_equal(np.isinf(lse), np.isinf(ref_lse)) and np.isinf(lse).any()
  fin = np.isfinite(ref_lse)
  assert rel_err(np.asarray(lse)[fin], np.asarray(ref_lse)[fin]) < 1e-5


@pytest.mark.parametrize("t,s,mask", [(1000, 1000, Mask(causal=True)), (1000, 1537, Mask(window=(300, 0)))])
def test_odd_lengths_default_blocks(t, s, mask):
  q, k, v, ct = random_qkv(5, 1, t, s, 2, 1, 16)
  assert_matches_reference("pallas_gpu", q, k, v, ct, mask=mask)


@pytest.mark.parametrize("dtype,mask", [(jnp.bfloat16, Mask(causal=True)), (jnp.float16, Mask(window=(17, 5)))],
                         ids=["bf16", "fp16"])
def test_half_precision(dtype, mask):
  q, k, v, ct = random_qkv(6, 1, 150, 150, 4, 2, 64, dtype=dtype)
  assert_matches_reference("pallas_gpu", q, k, v, ct, mask=mask)


def test_head_dims_padded_and_v_head_dim():
  q, k, v, ct = random_qkv(7, 1, 80, 80, 2, 1, 40, hv=24)
  assert_matches_reference("pallas_gpu", q, k, v, ct, mask=Mask(causal=True), block_sizes=BS)


def test_lse_gradient():
  """The lse output is differentiable (partial results merged across ring steps use it)."""
  q, k, v, ct = random_qkv(8, 1, 64, 64, 2, 1, 16)
  w = jax.random.normal(jax.random.PRNGKey(9), (1, 2, 64))
  mask = Mask(causal=True)
  visible = reference.dense_mask(mask, 64, 64)

  def loss(fn):
    def total(q, k, v):
      out, lse = fn(q, k, v)
      return jnp.sum(out * ct) + jnp.sum(lse * w)  # causal: every row sees a key, lse is finite
    return jax.jit(jax.grad(total, (0, 1, 2)))

  ours = lambda q, k, v: pallas_gpu.flash_attention_with_lse(q, k, v, mask=mask, block_sizes=BS, interpret=True)
  theirs = lambda q, k, v: reference.attention_with_lse(q, k, v, visible, 16 ** -0.5)
  for g, r in zip(loss(ours)(q, k, v), loss(theirs)(q, k, v)):
    assert rel_err(g, r) < 1e-5


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
