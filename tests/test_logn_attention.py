"""Log-n attention (ModelConfig.logn_attention): the scale, a GLOBAL layer's logits multiplied by it past L
(LOCAL and DSA layers untouched), every cached path equal to the full forward, and export's refusal
(restoring a checkpoint written before the field existed: tests/test_eval.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import build_model, hf_export, presets
from models.attention import logn_scale
from tests.test_models import _decode_all, _forward, _tokens
from tests.test_prefill_chunk import _cfg


def test_scale_and_validation():
  got = np.asarray(logn_scale(jnp.array([[0, 6, 7, 8, 63]]), 8))
  np.testing.assert_allclose(got, [[1, 1, 1, np.log(9) / np.log(8), 2]], rtol=1e-6)
  for bad in (-1, 1, 2.5, True):
    with pytest.raises(ValueError, match="logn_attention"):
      presets.get("decoder_tiny").replace(logn_attention=bad)


def _softmax_attention(q, k, v, scale):
  """Causal attention with the logits of query t multiplied by scale[t]: q [T, N, H], k/v [T, K, H]."""
  k, v = (np.repeat(a, q.shape[1] // a.shape[1], axis=1) for a in (k, v))
  s = np.einsum("tnh,snh->nts", q, k) * q.shape[-1] ** -0.5 * scale[None, :, None]
  s = np.where(np.tril(np.ones(s.shape[1:], bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("nts,snh->tnh", p / p.sum(-1, keepdims=True), v)


def test_global_layer_logits_are_multiplied_past_l():
  """The layer's output is softmax attention whose logits at query position p are scaled by
  max(1, log(p + 1) / log(L)); queries before L are unchanged."""
  cfg = _cfg("G")
  plain = build_model(cfg, rngs=nnx.Rngs(0)).blocks[0].attn
  logn = build_model(cfg.replace(logn_attention=8), rngs=nnx.Rngs(0)).blocks[0].attn
  x = 20 * jax.random.normal(jax.random.key(1), (1, 24, cfg.d_model))  # logits of order 1, not ~0 as at init
  pos = jnp.arange(24)[None]
  q, k, v, _ = plain._qkv(x, pos)
  scale = np.asarray(logn_scale(pos, 8))[0]
  want = plain.o(jnp.asarray(_softmax_attention(*(np.asarray(a[0]) for a in (q, k, v)), scale)[None]))
  got = logn(x, pos)[0]
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(got[:, :8], plain(x, pos)[0][:, :8], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(got[:, 8:] - plain(x, pos)[0][:, 8:]).max()) > 1e-2 * float(jnp.abs(got).max())


@pytest.mark.parametrize("pattern", ["L", "D"])
def test_local_and_dsa_layers_are_left_alone(pattern):
  cfg = _cfg(pattern)
  tokens = _tokens(0, (2, 30))
  a = build_model(cfg, rngs=nnx.Rngs(0))
  b = build_model(cfg.replace(logn_attention=4), rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(_forward(a, tokens), _forward(b, tokens))


@pytest.mark.parametrize("pattern", ["G", "DG", "LG"])
def test_decode_and_chunked_prefill_match_the_full_forward(pattern):
  model = build_model(_cfg(pattern, logn_attention=6), rngs=nnx.Rngs(1))
  tokens = _tokens(6, (3, 20))
  lens = jnp.array([4, 9, 13], jnp.int32)
  full, dec = _forward(model, tokens), _decode_all(model, tokens, lens)
  for row in range(3):
    start = int(lens[row]) - 1
    np.testing.assert_allclose(dec[row, :20 - start], full[row, start:], rtol=2e-5, atol=2e-5)
  lens = jnp.array([20, 9, 14], jnp.int32)
  last = nnx.jit(lambda m: m.prefill_last(tokens, lens, 24, prefill_chunk=5)[0])(model)
  np.testing.assert_allclose(last, full[np.arange(3), np.asarray(lens) - 1], rtol=2e-5, atol=2e-5)


def test_export_refuses_logn_attention():
  with pytest.raises(ValueError, match="logn_attention"):
    hf_export.hf_config(presets.get("decoder_tiny").replace(logn_attention=64))

