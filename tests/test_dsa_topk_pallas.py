"""Pallas top-k kernels (attention/dsa/topk_pallas.py): interpret mode vs a float64 oracle, cross-lowering,
and compiled memory O(T*k + chunk*S)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import Mask
from attention.dsa import indexer_scores, topk_indices
from tests.test_dsa import _indexer_inputs, _np_scores, _np_topk, _np_visible

IMPLS = ["pallas_gpu", "pallas_tpu"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask,q_offset,top_k,segmented", [
    (Mask(causal=True, window=(9, 0)), 20, 12, False),  # window + q_offset: tiles outside are skipped
    (Mask(causal=True), np.array([0, 30]), 90, True),  # top_k above the visible count, segments, [B] offset
])
def test_matches_float64_oracle_with_ties(impl, mask, q_offset, top_k, segmented):
  """Small-integer inputs: exact scores with many ties, so order and tie-breaking are checked exactly."""
  b, t, s = 2, 40, 70  # two query chunks of 32, S not a multiple of the key tile
  q_idx, k_idx, w = _indexer_inputs(31, b, t, s, 2, 8, integer=True)
  seg = kv_seg = None
  if segmented:
    kv_seg = jnp.asarray(np.repeat([[0, 1, 2]], b, 0).repeat([25, 25, 20], 1), jnp.int32)
    seg = kv_seg[:, 10:10 + t]
  off = jnp.asarray(q_offset, jnp.int32) if isinstance(q_offset, np.ndarray) else q_offset
  got = topk_indices(q_idx, k_idx, w, top_k=top_k, mask=mask, q_offset=off, segment_ids=seg,
                     kv_segment_ids=kv_seg, impl=impl, score_dtype=jnp.float32, chunk_size=32)
  assert got.dtype == jnp.int32 and got.shape == (b, t, top_k)
  score = _np_scores(q_idx, k_idx, w)
  for bi in range(b):
    o = int(np.asarray(q_offset).reshape(-1)[bi % np.size(q_offset)])
    rows = (None, None) if seg is None else (seg[bi:bi + 1], kv_seg[bi:bi + 1])
    vis = _np_visible(mask, t, s, o, *rows)
    np.testing.assert_array_equal(got[bi:bi + 1], _np_topk(score[bi:bi + 1], vis, top_k))


@pytest.mark.parametrize("impl,score_dtype", [("pallas_gpu", jnp.bfloat16), ("pallas_tpu", jnp.float8_e4m3fn)])
def test_low_precision_scores_select_what_xla_selects(impl, score_dtype):
  """bf16 and fp8 products: the selected keys' scores equal those of the xla selector's keys (same
  quantisation; the summation order may swap near-equal keys, so scores are compared, not indices)."""
  q_idx, k_idx, w = _indexer_inputs(32, 1, 24, 50, 3, 16)
  kw = dict(top_k=10, mask=Mask(causal=True), score_dtype=score_dtype)
  got = np.asarray(topk_indices(q_idx, k_idx, w, impl=impl, **kw))
  want = np.asarray(topk_indices(q_idx, k_idx, w, impl="xla", **kw))
  np.testing.assert_array_equal(got < 0, want < 0)
  score = np.asarray(indexer_scores(q_idx, k_idx, w, score_dtype=score_dtype))[0]
  pick = lambda idx: np.take_along_axis(score, np.maximum(idx[0], 0), axis=1) * (idx[0] >= 0)
  np.testing.assert_allclose(pick(got), pick(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl,platform", [("pallas_gpu", "cuda"), ("pallas_tpu", "tpu")])
@pytest.mark.parametrize("score_dtype", [jnp.bfloat16, jnp.float8_e4m3fn])
def test_cross_lowers_for_hardware(impl, platform, score_dtype):
  """interpret=False lowers both kernels (scores, threshold) for the hardware from a CPU-only machine."""
  sd = jax.ShapeDtypeStruct
  args = (sd((2, 1000, 64, 128), jnp.bfloat16), sd((2, 1000, 128), jnp.bfloat16), sd((2, 1000, 64), jnp.float32),
          sd((2,), jnp.int32), sd((2, 1000), jnp.int32))
  fn = lambda qi, ki, w, off, seg: topk_indices(qi, ki, w, top_k=300, mask=Mask(causal=True, window=(500, 0)),
                                                q_offset=off, segment_ids=seg, impl=impl, interpret=False,
                                                score_dtype=score_dtype)
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  assert len(re.findall(r"__gpu\$xla\.gpu\.triton|tpu_custom_call", text)) == 2


@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_memory_is_chunk_by_s_not_t_by_s(impl):
  """Temp bytes of the compiled (interpret-mode) selector stay within a few chunk x S arrays."""
  t = s = 8192
  top_k, chunk = 128, 128
  sd = jax.ShapeDtypeStruct
  args = (sd((1, t, 2, 16), jnp.float32), sd((1, s, 16), jnp.float32), sd((1, t, 2), jnp.float32))
  fn = lambda qi, ki, w: topk_indices(qi, ki, w, top_k=top_k, impl=impl, chunk_size=chunk)
  temp = jax.jit(fn).trace(*args).lower().compile().memory_analysis().temp_size_in_bytes
  operands = 4 * 128 * (2 * t + s)  # q and k padded to 128 lanes (the TPU layout), float32
  assert temp < 4 * t * top_k + 8 * (4 * chunk * s) + 2 * operands, temp  # + eight f32 [chunk, S] arrays
  assert 6 * temp < 4 * t * s, temp  # a dense [T, S] f32 score array alone would be 6x more
