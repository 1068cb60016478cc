"""Blockwise XLA flash attention against the reference: forward and gradients, every mask kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import BlockSizes, Mask, attend, xla_flash
from attention_testing import assert_matches_reference, fwd_and_grads, random_qkv, rel_err

BS = BlockSizes(64, 32)  # small tiles so short inputs span many blocks and partial tail blocks


@pytest.mark.parametrize("mask", [
    Mask(), Mask(causal=True), Mask(window=(20, 0)), Mask(window=(9, 13)), Mask(causal=True, window=(33, 0)),
    Mask(window=(500, 500)), Mask(causal=True, window=(0, 0)), Mask(window=(0, 0))], ids=str)
def test_masks(mask):
  q, k, v, ct = random_qkv(0, 2, 200, 200, 4, 2, 16)
  assert_matches_reference("xla", q, k, v, ct, mask=mask, block_sizes=BS)


@pytest.mark.parametrize("n,k", [(8, 2), (8, 1), (8, 8)])
def test_gqa_and_mqa(n, k):
  q, kk, v, ct = random_qkv(1, 1, 130, 130, n, k, 8)
  assert_matches_reference("xla", q, kk, v, ct, mask=Mask(causal=True), block_sizes=BS)


@pytest.mark.parametrize("t,s,mask,q_offset", [
    (1, 777, Mask(causal=True), 776),  # decode: one query at the end of a long cache
    (1, 777, Mask(causal=True, window=(100, 0)), 700),
    (90, 250, Mask(causal=True), 0),  # top-left aligned causal, as jax.nn.dot_product_attention
    (250, 90, Mask(causal=True), 0),
    (70, 300, Mask(causal=True), 230),
])
def test_t_differs_from_s(t, s, mask, q_offset):
  q, k, v, ct = random_qkv(2, 2, t, s, 4, 2, 16)
  assert_matches_reference("xla", q, k, v, ct, mask=mask, q_offset=q_offset, block_sizes=BS)


def test_per_row_q_offsets():
  q, k, v, ct = random_qkv(3, 3, 5, 400, 4, 4, 8)
  off = jnp.array([0, 200, 395], jnp.int32)
  assert_matches_reference("xla", q, k, v, ct, mask=Mask(causal=True, window=(64, 0)), q_offset=off,
                           block_sizes=BS)


@pytest.mark.parametrize("length", [1000, 1537])
def test_lengths_not_block_multiples_default_blocks(length):
  q, k, v, ct = random_qkv(4, 1, length, length, 2, 1, 16)
  assert_matches_reference("xla", q, k, v, ct, mask=Mask(causal=True))


def test_matches_jax_dot_product_attention_with_gradients():
  q, k, v, ct = random_qkv(5, 2, 200, 200, 4, 2, 32)
  for causal, window in [(True, None), (False, (40, 40))]:
    mask = Mask(causal=causal, window=window)
    theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=window)
    ours = lambda q, k, v: attend(q, k, v, mask=mask, impl="xla", block_sizes=BS)
    assert rel_err(ours(q, k, v), theirs(q, k, v)) < 1e-5
    g1 = jax.vjp(ours, q, k, v)[1](ct)
    g2 = jax.vjp(theirs, q, k, v)[1](ct)
    for a, b in zip(g1, g2):
      assert rel_err(a, b) < 1e-5


def packed_segments(b, t, cut):
  return jnp.broadcast_to((jnp.arange(t) >= cut).astype(jnp.int32), (b, t))


@pytest.mark.parametrize("mask", [Mask(), Mask(causal=True), Mask(causal=True, window=(40, 0))], ids=str)
def test_segments_match_reference(mask):
  q, k, v, ct = random_qkv(6, 2, 300, 300, 4, 2, 16)
  seg = jnp.asarray(np.sort(np.random.default_rng(0).integers(0, 5, (2, 300)), axis=1), jnp.int32)
  assert_matches_reference("xla", q, k, v, ct, mask=mask, segment_ids=seg, block_sizes=BS)


def test_packed_documents_do_not_see_each_other():
  q, k, v, _ = random_qkv(7, 1, 256, 256, 2, 2, 16)
  seg = packed_segments(1, 256, 100)
  f = jax.jit(lambda q, k, v: attend(q, k, v, mask=Mask(causal=True), segment_ids=seg, impl="xla",
                                     block_sizes=BS))
  out = f(q, k, v)
  noise = jax.random.normal(jax.random.PRNGKey(9), (1, 100, 2, 16))
  out2 = f(q.at[:, :100].add(noise), k.at[:, :100].add(noise), v.at[:, :100].add(noise))
  np.testing.assert_array_equal(np.asarray(out[:, 100:]), np.asarray(out2[:, 100:]))  # bit-identical
  assert not np.allclose(out[:, :100], out2[:, :100])


def test_fully_masked_rows_give_zeros_and_finite_grads():
  q, k, v, ct = random_qkv(8, 1, 100, 100, 2, 1, 8)
  seg_q = jnp.where(jnp.arange(100) % 7 == 0, 9, 1)[None].astype(jnp.int32)  # id 9: no key has it
  seg_k = jnp.ones((1, 100), jnp.int32)
  kw = dict(segment_ids=seg_q, kv_segment_ids=seg_k, block_sizes=BS)
  assert_matches_reference("xla", q, k, v, ct, **kw)
  out, grads = fwd_and_grads("xla", q, k, v, ct, **kw)
  assert np.all(np.asarray(out[0, ::7]) == 0)
  # Queries beyond every key's window (window (5, 0) with q_offset past S): all rows empty.
  out = attend(q, k, v, mask=Mask(window=(5, 0)), q_offset=200, impl="xla", block_sizes=BS)
  assert np.all(np.asarray(out) == 0)


def test_zero_cotangent_gives_zero_gradients():
  q, k, v, _ = random_qkv(9, 1, 150, 150, 2, 1, 8)
  _, grads = fwd_and_grads("xla", q, k, v, jnp.zeros((1, 150, 2, 8)), mask=Mask(causal=True), block_sizes=BS)
  for g in grads:
    assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(dtype):
  q, k, v, ct = random_qkv(10, 1, 200, 200, 4, 2, 32, dtype=dtype)
  assert_matches_reference("xla", q, k, v, ct, mask=Mask(causal=True, window=(50, 0)), block_sizes=BS)


def test_separate_value_head_dim():
  q, k, v, ct = random_qkv(11, 1, 100, 120, 4, 2, 24, hv=16)
  assert_matches_reference("xla", q, k, v, ct, mask=Mask(causal=True), block_sizes=BS)


def test_lse_matches_reference_and_is_differentiable():
  q, k, v, ct = random_qkv(12, 1, 90, 90, 2, 1, 8)
  from attention import reference
  mask = Mask(causal=True, window=(20, 0))
  vis = reference.dense_mask(mask, 90, 90)

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)[1]))

  ours = lambda q, k, v: xla_flash.flash_attention_with_lse(q, k, v, mask=mask, block_sizes=BS)
  ref = lambda q, k, v: reference.attention_with_lse(q, k, v, vis, 8 ** -0.5)
  assert rel_err(ours(q, k, v)[1], ref(q, k, v)[1]) < 1e-5
  for a, b in zip(jax.grad(loss(ours), (0, 1, 2))(q, k, v), jax.grad(loss(ref), (0, 1, 2))(q, k, v)):
    assert rel_err(a, b) < 1e-5


def test_compiled_memory_is_linear_in_length():
  """fwd+bwd temp bytes at B=1, N=8, H=64: >= 20x below the dense reference at 16K; <= 10x growth 2K->16K.

  Compile only (memory_analysis is deterministic); the reference's 16K score array is never allocated.
  """
  from benchmarks.attention_memory import temp_bytes
  causal = Mask(causal=True)
  xla_2k, xla_16k = (temp_bytes("xla", causal, (1, L, 8, 64)) for L in (2048, 16384))
  ref_16k = temp_bytes("reference", causal, (1, 16384, 8, 64))
  assert ref_16k >= 20 * xla_16k, (ref_16k, xla_16k)
  assert xla_16k <= 10 * xla_2k, (xla_2k, xla_16k)
