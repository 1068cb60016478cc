"""The dense oracle against jax.nn.dot_product_attention and float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import Mask, reference
from attention.testing import random_qkv, rel_err


def numpy_attention(q, k, v, visible, scale):
  """float64 NumPy attention; visible [T, S] or [B, T, S]; rows with no visible key give zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, n, h = q.shape
  g = n // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("btnh,bsnh->bnts", q, k) * scale
  vis = np.broadcast_to(np.asarray(visible).reshape(-1, 1, t, k.shape[1]), s.shape)
  s = np.where(vis, s, -np.inf)
  m = np.max(s, -1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0)
  p = np.exp(s - m)
  d = p.sum(-1, keepdims=True)
  p = p / np.where(d == 0, 1, d)
  return np.einsum("bnts,bsnh->btnh", p, v)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, (7, 3)), (True, (16, 0))])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_matches_jax_dot_product_attention(causal, window, kv_heads):
  q, k, v, _ = random_qkv(0, 2, 53, 53, 4, kv_heads, 16)
  ours = reference.attention(q, k, v, mask=Mask(causal=causal, window=window))
  theirs = jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=window,
                                        implementation="xla")
  assert rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("q_offset", [0, 9])
def test_matches_float64_numpy_with_segments_and_offset(q_offset):
  t, s = 23, 40
  q, k, v, _ = random_qkv(1, 2, t, s, 6, 3, 8, hv=5)
  seg_q = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, t)), jnp.int32)
  seg_k = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, s)), jnp.int32)
  mask = Mask(causal=True, window=(12, 2))
  ours = reference.attention(q, k, v, mask=mask, segment_ids=seg_q, kv_segment_ids=seg_k, q_offset=q_offset)
  p = np.arange(t)[:, None] + q_offset
  j = np.arange(s)[None, :]
  vis = (j <= p) & (j >= p - 12) & (j <= p + 2) & (np.asarray(seg_q)[:, :, None] == np.asarray(seg_k)[:, None, :])
  expected = numpy_attention(q, k, v, vis, 8 ** -0.5)
  assert ours.shape == (2, t, 6, 5)
  assert rel_err(ours, expected) < 1e-5


def test_fully_masked_rows_are_zero_with_finite_gradients():
  q, k, v, ct = random_qkv(2, 1, 8, 8, 2, 2, 4)
  seg_q = jnp.array([[0, 0, 0, 0, 5, 5, 1, 1]], jnp.int32)  # id 5 appears in no key
  seg_k = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1]], jnp.int32)
  f = lambda q: reference.attention(q, k, v, segment_ids=seg_q, kv_segment_ids=seg_k)
  out = f(q)
  assert np.all(np.asarray(out[0, 4:6]) == 0) and np.all(np.asarray(out[0, :4]) != 0)
  g = jax.grad(lambda q: jnp.sum(f(q) * ct))(q)
  assert np.all(np.isfinite(np.asarray(g)))
