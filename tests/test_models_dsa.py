"""Tests of DSA layers in the decoder: sparse vs dense, the two indexer-training phases, KV-cache decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.rope import RopeScaling
import models
from models import build_model, presets
from tests.test_models import _decode_all, _forward, _tokens


def _cfg(**kw):
  base = dict(num_layers=2, attention_pattern="GD", dsa_index_heads=2, dsa_index_dim=8, dsa_rope_dim=4,
              dsa_top_k=6, dsa_score_dtype="float32", max_len=64)
  return presets.get("decoder_tiny").replace(**dict(base, **kw))


def test_dsa_with_all_keys_equals_dense_and_top_k_matters():
  tokens = _tokens(0, (2, 24))
  dense = _forward(build_model(_cfg(dsa_phase="dense_warmup"), rngs=nnx.Rngs(0)), tokens)
  full_k = _forward(build_model(_cfg(dsa_top_k=24), rngs=nnx.Rngs(0)), tokens)
  np.testing.assert_allclose(full_k, dense, rtol=1e-5, atol=1e-5)
  sparse = _forward(build_model(_cfg(dsa_top_k=4), rngs=nnx.Rngs(0)), tokens)
  np.testing.assert_allclose(sparse[:, :4], dense[:, :4], rtol=1e-5, atol=1e-5)  # <= 4 visible keys
  assert float(jnp.abs(sparse[:, 8:] - dense[:, 8:]).max()) > 1e-4
  # local keys: a window of 20 and a top-4 see all 24 keys; a window of 3 changes the answer of top-4 alone
  windowed = _forward(build_model(_cfg(dsa_top_k=4, dsa_local_keys=20), rngs=nnx.Rngs(0)), tokens)
  np.testing.assert_allclose(windowed, dense, rtol=1e-5, atol=1e-5)
  local3 = _forward(build_model(_cfg(dsa_top_k=4, dsa_local_keys=3), rngs=nnx.Rngs(0)), tokens)
  assert float(jnp.abs(local3[:, 8:] - sparse[:, 8:]).max()) > 1e-4


def _is_indexer(path):
  return any(p in ("q_idx", "k_idx", "w_idx", "smear_idx") for p in path)


@pytest.mark.parametrize("phase,smeared", [("dense_warmup", False), ("sparse", False), ("sparse", True)])
def test_indexer_kl_trains_only_the_indexer_and_lm_loss_only_the_model(phase, smeared):
  model = build_model(_cfg(dsa_phase=phase, dsa_smeared_keys=smeared), rngs=nnx.Rngs(1))
  tokens, seg = _tokens(2, (2, 20)), jnp.array([[1] * 12 + [2] * 8, [1] * 20])

  def losses(m):
    logits, aux = m(tokens, segment_ids=seg, return_aux=True)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), aux["indexer_kl"]

  lm_grads = nnx.jit(nnx.grad(lambda m: losses(m)[0]))(model)
  kl, kl_grads = nnx.jit(nnx.value_and_grad(lambda m: losses(m)[1]))(model)
  assert float(kl) > 0 and np.isfinite(float(kl))
  for path, g in nnx.to_flat_state(lm_grads):
    norm = float(jnp.abs(g[...]).max())
    assert (norm == 0) == _is_indexer(path), (phase, path, norm)  # LM loss: everything but the indexer
  for path, g in nnx.to_flat_state(kl_grads):
    norm = float(jnp.abs(g[...]).max())
    assert (norm > 0) == _is_indexer(path), (phase, path, norm)  # KL: the indexer only


@pytest.mark.parametrize("smeared,local_keys", [(False, 0), (True, 0), (False, 4)])
def test_dsa_packing_isolation(smeared, local_keys):
  model = build_model(_cfg(dsa_smeared_keys=smeared, dsa_local_keys=local_keys), rngs=nnx.Rngs(2))
  seg = jnp.array([[1] * 14 + [2] * 18])
  a = _tokens(3, (1, 32))
  b = a.at[:, :14].set(_tokens(4, (1, 14)))
  la, lb = _forward(model, a, segment_ids=seg), _forward(model, b, segment_ids=seg)
  np.testing.assert_allclose(la[:, 14:], lb[:, 14:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(la[:, 14:], _forward(model, a[:, 14:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("phase,local_keys", [("sparse", 0), ("dense_warmup", 0), ("sparse", 3)])
def test_dsa_kv_cache_decode_matches_full_forward(phase, local_keys):
  model = build_model(_cfg(dsa_phase=phase, attention_pattern="DD", dsa_local_keys=local_keys), rngs=nnx.Rngs(3))
  tokens = _tokens(5, (2, 20))
  lens = jnp.array([5, 11], jnp.int32)
  full = _forward(model, tokens)
  dec = _decode_all(model, tokens, lens)
  for row in range(2):
    start = int(lens[row]) - 1
    np.testing.assert_allclose(dec[row, :20 - start], full[row, start:], rtol=2e-5, atol=2e-5)


def test_dsa_generate_and_flops():
  cfg = _cfg(dsa_score_dtype="bfloat16")
  model = build_model(cfg, rngs=nnx.Rngs(4))
  out = models.generate(model, [[3, 4, 5], [9] * 9], max_new_tokens=4)
  seq = jnp.array([[9] * 9 + out[1].tolist()])
  assert out[1].tolist() == jnp.argmax(_forward(model, seq)[0, 8:-1], axis=-1).tolist()
  t = 64
  per_key = 4 * cfg.num_heads * cfg.head_dim
  dense = (t + 1) / 2
  sparse = np.mean(np.minimum(np.arange(1, t + 1), cfg.dsa_top_k))
  indexer = 2 * cfg.dsa_index_heads * (cfg.dsa_index_dim + 1) * dense
  assert models.attention_flops_per_token(cfg, t) == pytest.approx(per_key * dense + per_key * sparse + indexer)
  local = np.mean(np.minimum(np.arange(1, t + 1), cfg.dsa_top_k + 5))
  assert models.attention_flops_per_token(cfg.replace(dsa_local_keys=5), t) == pytest.approx(
      per_key * dense + per_key * local + indexer)
  with pytest.raises(ValueError, match="dsa_local_keys must be an int >= 0, got -1"):
    cfg.replace(dsa_local_keys=-1)


def test_indexer_selection_ignores_yarn_temperature():
  # YaRN's temperature scales every logit of a softmax; inside the indexer's partial RoPE it would scale only
  # the rotated dims and change which keys win (the collapse of DSA's recall at 64x, docs/extension.md).
  x = jax.random.normal(jax.random.key(0), (2, 48, 64))
  pos = jnp.broadcast_to(jnp.arange(48), (2, 48))
  picks = []
  for temperature in (1.0, 4.0):
    yarn = RopeScaling(kind="yarn", factor=4.0, original_max_len=16, attention_factor=temperature)
    model = build_model(_cfg(rope_scaling=yarn, d_model=64), rngs=nnx.Rngs(0))
    picks.append(np.sort(np.asarray(model.blocks[1].attn.selection(x, pos)), -1))  # [B, T, top_k]
  np.testing.assert_array_equal(picks[0], picks[1])
  plain = build_model(_cfg(d_model=64), rngs=nnx.Rngs(0)).blocks[1].attn.selection(x, pos)
  assert not np.array_equal(np.sort(np.asarray(plain), -1), picks[0])  # the frequencies still matter
