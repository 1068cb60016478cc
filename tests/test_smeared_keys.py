"""Smeared keys (ModelConfig.smeared_keys; Olsson et al. 2022), and the DSA indexer's (dsa_smeared_keys): the
formula, document boundaries, and every cached path (prefill, chunked prefill, decode) equal to the full
forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import build_model, hf_export, presets
from tests.test_models import _decode_all, _forward, _tokens
from tests.test_prefill_chunk import _cfg


def test_smear_formula_and_document_boundaries():
  cfg = presets.get("decoder_tiny").replace(num_layers=1, num_heads=4, num_kv_heads=4, smeared_keys=True)
  attn = build_model(cfg, rngs=nnx.Rngs(0)).blocks[0].attn
  attn.smear[...] = jnp.array([-1.0, 0.0, 0.5, 2.0])  # one share per kv head
  rng = np.random.default_rng(0)
  k = rng.normal(size=(2, 7, 4, cfg.head_dim)).astype(np.float32)
  seg = np.array([[1, 1, 1, 2, 2, 2, 2], [1] * 7])
  pos = np.array([[0, 1, 2, 0, 1, 2, 3], [3, 4, 5, 6, 7, 8, 9]])  # row 2 starts inside a document
  got = np.asarray(attn._smear(jnp.asarray(k), jnp.asarray(pos), jnp.asarray(seg), None, attn.smear, "k_last"))
  a = 1 / (1 + np.exp(-np.array([-1.0, 0.0, 0.5, 2.0])))[:, None]
  want = k.copy()
  for b in range(2):
    for t in range(1, 7):
      if pos[b, t] > 0 and seg[b, t] == seg[b, t - 1]:
        want[b, t] = a * k[b, t] + (1 - a) * k[b, t - 1]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # With a cache, the first position is smeared with the cached previous key.
  prev = rng.normal(size=(2, 4, cfg.head_dim)).astype(np.float32)
  got = np.asarray(attn._smear(jnp.asarray(k[:, :1]), jnp.asarray(pos[:, :1]), None, {"k_last": jnp.asarray(prev)},
                               attn.smear, "k_last"))
  np.testing.assert_allclose(got[0, 0], k[0, 0], rtol=1e-6)  # position 0: nothing before it
  np.testing.assert_allclose(got[1, 0], a * k[1, 0] + (1 - a) * prev[1], rtol=1e-6, atol=1e-6)


def test_smeared_keys_change_the_model_and_train_the_share():
  base = presets.get("decoder_tiny").replace(num_layers=2)
  plain = build_model(base, rngs=nnx.Rngs(3))
  smeared = build_model(base.replace(smeared_keys=True), rngs=nnx.Rngs(3))
  tokens = _tokens(1, (2, 16))
  diff = jnp.abs(_forward(plain, tokens) - _forward(smeared, tokens))
  assert float(diff[:, 0].max()) < 1e-6 and float(diff[:, 1:].max()) > 1e-4  # position 0 has no previous key
  smeared.blocks[0].attn.smear[...] = jnp.full((base.num_kv_heads,), 30.0)  # share 1: back to plain keys
  smeared.blocks[1].attn.smear[...] = jnp.full((base.num_kv_heads,), 30.0)
  np.testing.assert_allclose(_forward(smeared, tokens), _forward(plain, tokens), rtol=1e-5, atol=1e-5)
  smeared.blocks[0].attn.smear[...] = jnp.zeros((base.num_kv_heads,))
  grads = nnx.grad(lambda m: jnp.mean(jax.nn.log_softmax(m(tokens))[..., 5]))(smeared)
  assert float(jnp.abs(grads["blocks"][0]["attn"]["smear"][...]).min()) > 0


def test_packing_isolation_with_smeared_keys():
  model = build_model(presets.get("decoder_tiny").replace(attention_pattern="GL", window=(8, 8), smeared_keys=True),
                      rngs=nnx.Rngs(0))
  seg = jnp.array([[1] * 20 + [2] * 16])
  a = _tokens(1, (1, 36))
  b = a.at[:, :20].set(_tokens(2, (1, 20)))  # document 1 changes, its last key sits right before document 2
  la, lb = _forward(model, a, segment_ids=seg), _forward(model, b, segment_ids=seg)
  np.testing.assert_allclose(la[:, 20:], lb[:, 20:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(la[:, 20:], _forward(model, a[:, 20:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pattern,idx", [("G", False), ("L", False), ("D", False), ("D", True), ("LG", False)])
def test_decode_with_smeared_keys_matches_full_forward(pattern, idx):
  model = build_model(_cfg(pattern, smeared_keys=True, dsa_smeared_keys=idx), rngs=nnx.Rngs(1))
  tokens = _tokens(6, (3, 20))
  lens = jnp.array([4, 9, 13], jnp.int32)  # ragged prompts: each row's cached previous key is its own
  full, dec = _forward(model, tokens), _decode_all(model, tokens, lens)
  for row in range(3):
    start = int(lens[row]) - 1
    np.testing.assert_allclose(dec[row, :20 - start], full[row, start:], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("pattern,chunk,idx", [("G", 5, False), ("L", 4, False), ("D", 5, True)])
def test_chunked_prefill_with_smeared_keys_matches_one_shot(pattern, chunk, idx):
  model = build_model(_cfg(pattern, smeared_keys=True, dsa_smeared_keys=idx), rngs=nnx.Rngs(2))
  tokens, lens = _tokens(0, (3, 23)), jnp.array([23, 9, 14], jnp.int32)
  (ref, ref_cache), (last, cache) = nnx.jit(lambda m: (m.prefill(tokens, lens, 30),
                                                       m.prefill_last(tokens, lens, 30, prefill_chunk=chunk)))(model)
  np.testing.assert_allclose(last, ref[np.arange(3), np.asarray(lens) - 1], rtol=2e-5, atol=2e-5)
  for a, b in zip(ref_cache["layers"], cache["layers"]):  # the key decoding will smear with: the last prompt key
    for name in ("k_last", "k_idx_last") if idx else ("k_last",):
      np.testing.assert_allclose(b[name], a[name], rtol=2e-5, atol=2e-5)


def test_export_refuses_smeared_keys():
  cfg = presets.get("decoder_tiny").replace(smeared_keys=True)
  with pytest.raises(ValueError, match="smeared_keys"):
    hf_export.hf_config(cfg)
