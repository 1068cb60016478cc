"""RoPE and its scaling rules against the papers' formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.rope import RopeScaling, apply_rope, rope_frequencies, yarn_ramp

D, THETA = 64, 10000.0


def plain_inv_freq(dim=D, theta=THETA):
  return 1.0 / theta ** (np.arange(0, dim, 2) / dim)


def test_factor_one_equals_plain_rope_for_every_rule():
  for kind in ("none", "linear", "ntk", "dynamic_ntk", "yarn"):
    f, scale = rope_frequencies(D, THETA, RopeScaling(kind, 1.0, original_max_len=256), seq_len=4096)
    np.testing.assert_allclose(f, plain_inv_freq(), rtol=1e-6)
    assert scale == 1.0


def test_linear_is_position_interpolation():
  """PI (arXiv 2306.15595): position p under factor s is rotated as plain RoPE at p / s."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 50, 2, D))
  pos = jnp.arange(50) * 3
  f_pi, _ = rope_frequencies(D, THETA, RopeScaling("linear", 4.0))
  f, _ = rope_frequencies(D, THETA)
  np.testing.assert_allclose(apply_rope(x, pos, f_pi), apply_rope(x, pos / 4.0, f), rtol=1e-5, atol=1e-5)


def test_ntk_changes_the_base():
  s = 8.0
  f, _ = rope_frequencies(D, THETA, RopeScaling("ntk", s))
  np.testing.assert_allclose(f, plain_inv_freq(theta=THETA * s ** (D / (D - 2))), rtol=1e-5)
  assert f[0] == 1.0  # the highest frequency is kept
  np.testing.assert_allclose(f[-1], plain_inv_freq()[-1] / s ** ((D - 2) / (D - 2)) , rtol=1e-4)


def test_dynamic_ntk_scales_with_current_length():
  sc = RopeScaling("dynamic_ntk", 4.0, original_max_len=256)
  short, _ = rope_frequencies(D, THETA, sc, seq_len=200)
  np.testing.assert_allclose(short, plain_inv_freq(), rtol=1e-6)  # within L0: unchanged
  long, _ = rope_frequencies(D, THETA, sc, seq_len=1024)
  s_dyn = 4.0 * 1024 / 256 - 3.0
  np.testing.assert_allclose(long, plain_inv_freq(theta=THETA * s_dyn ** (D / (D - 2))), rtol=1e-5)


def test_yarn_ntk_by_parts_and_temperature():
  """YaRN (arXiv 2309.00071): r(d) = L0 / lambda_d; r > beta_fast keeps, r < beta_slow interpolates."""
  s, l0 = 8.0, 4096
  sc = RopeScaling("yarn", s, original_max_len=l0)
  f, scale = rope_frequencies(D, THETA, sc)
  plain = plain_inv_freq()
  rotations = l0 * plain / (2 * math.pi)  # how often dimension d turns over the original context
  keep, interp = rotations > sc.beta_fast * 1.5, rotations < sc.beta_slow / 1.5
  assert keep.any() and interp.any()
  np.testing.assert_allclose(f[keep], plain[keep], rtol=1e-6)
  np.testing.assert_allclose(f[interp], plain[interp] / s, rtol=1e-6)
  between = ~keep & ~interp
  assert np.all((f[between] <= plain[between] + 1e-9) & (f[between] >= plain[between] / s - 1e-9))
  ramp = np.asarray(yarn_ramp(D, THETA, sc))
  assert np.all(np.diff(ramp) >= 0) and ramp[0] == 0 and ramp[-1] == 1
  assert scale == pytest.approx(0.1 * math.log(s) + 1)


def test_rope_is_relative():
  """q.k after RoPE depends only on the position difference, and the norm is preserved."""
  q = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, D))
  k = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 1, D))
  f, _ = rope_frequencies(D, THETA, RopeScaling("yarn", 4.0, original_max_len=128))
  dot = lambda pq, pk: float(jnp.sum(apply_rope(q, jnp.array([pq]), f) * apply_rope(k, jnp.array([pk]), f)))
  assert dot(10, 3) == pytest.approx(dot(107, 100), rel=1e-4)
  np.testing.assert_allclose(jnp.linalg.norm(apply_rope(q, jnp.array([77]), f)), jnp.linalg.norm(q), rtol=1e-5)


def test_half_rotation_layout_and_partial_rotary_dim():
  """Dimension i pairs with i + D/2 (Hugging Face Llama layout); dims past rotary_dim are untouched."""
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 3, D))
  pos = jnp.arange(5)
  f, _ = rope_frequencies(32, THETA)
  out = apply_rope(x, pos, f, rotary_dim=32)
  np.testing.assert_array_equal(out[..., 32:], x[..., 32:])
  ang = np.asarray(pos)[:, None] * np.asarray(f)
  x1, x2 = np.asarray(x[..., :16]), np.asarray(x[..., 16:32])
  c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
  np.testing.assert_allclose(out[..., :16], x1 * c - x2 * s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[..., 16:32], x2 * c + x1 * s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(kind="rotate"), "kind"), (dict(kind="linear", factor=0.5), "factor"),
    (dict(kind="yarn", factor=2.0), "original_max_len"), (dict(beta_fast=1.0, beta_slow=2.0), "beta_fast")])
def test_scaling_validation(kw, match):
  with pytest.raises(ValueError, match=match):
    RopeScaling(**kw)


def test_yarn_attention_factor_overrides_the_temperature():
  s = RopeScaling("yarn", 8.0, original_max_len=128)
  freq, scale = rope_frequencies(16, 1e4, s)
  freq1, scale1 = rope_frequencies(16, 1e4, RopeScaling("yarn", 8.0, original_max_len=128,
                                                        attention_factor=1.0))
  np.testing.assert_array_equal(freq, freq1)
  assert scale == pytest.approx(0.1 * np.log(8) + 1) and scale1 == 1.0
  with pytest.raises(ValueError, match="attention_factor applies to kind='yarn' only"):
    RopeScaling("linear", 2.0, attention_factor=1.0)
