"""benchmarks/extension_diagnosis.py: its attention rows are the model's attention (its indexer recall is
eval/indexer_recall.py, tested in test_indexer_recall.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import data
from attention import reference
from benchmarks import extension_diagnosis as diag
from models import build_model, presets


def _model(pattern, **kw):
  cfg = presets.get("decoder_tiny").replace(vocab_size=272, num_layers=len(pattern), attention_pattern=pattern,
                                            smeared_keys=True, dsa_index_heads=2, dsa_index_dim=8, dsa_rope_dim=4,
                                            dsa_score_dtype="float32", **kw)
  return build_model(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("pattern", ["GG", "GL"])
def test_attention_rows_reproduce_the_layer_attention(pattern):
  model = _model(pattern, window=(4, 0))  # "GL": the local layer sees 5 keys, its row must too
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 24)), jnp.int32)
  query = jnp.array([5, 23])
  rows = diag.layer_attention(model, tokens, query)  # per layer [B, N, T]
  positions = jnp.broadcast_to(jnp.arange(24), (2, 24))
  x = model.embed(tokens)
  for block, p in zip(model.blocks, rows):
    q, k, v, _ = block.attn._qkv(block._pre(x), positions)
    want = reference.attention(q, k, v, mask=block.attn.mask)[jnp.arange(2), query]  # [B, N, H]
    v = jnp.repeat(v, q.shape[2] // v.shape[2], axis=2)
    np.testing.assert_allclose(jnp.einsum("bns,bsnh->bnh", p, v), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.abs(p[0, :, 6:]).max()) == 0.0  # causal: nothing after the query
    x, _ = block(x, positions)


def test_passkey_diagnosis():
  tok = data.get_tokenizer()
  res = diag.diagnose(_model("GG"), tok, 96, samples=1)
  assert 0.0 <= res["passkey"] <= 1.0 and len(res["layers"]) == 2
  for layer in res["layers"]:
    assert 0.0 <= layer["digit_mass"] <= layer["needle_mass"] <= 1.0 + 1e-6
    assert 0.0 <= layer["entropy"] <= res["uniform_entropy"] + 1e-6
  assert res["indexer_recall"] is None  # no DSA layer


def test_copy_heads_read_the_attention_on_each_key_digit():
  from benchmarks import passkey_copy_heads  # pylint: disable=g-import-not-at-top
  from data import passkey as passkey_lib  # pylint: disable=g-import-not-at-top
  from eval import passkey as passkey_eval  # pylint: disable=g-import-not-at-top
  model, tok = _model("GG"), data.get_tokenizer()
  mass = np.asarray(passkey_copy_heads.copy_mass(model, tok, 64, samples=1))  # [digit, layer, head]
  assert mass.shape == (5, 2, model.cfg.num_heads)
  # Digit 3, one prompt per depth: the attention of the position that predicts it on that digit in the needle.
  want = []
  for d in passkey_eval.DEPTHS:
    e = passkey_lib.passkey_example(tok, 64, d, passkey_eval.sample_seed(64, d, 0), "compact")
    rows = diag.layer_attention(model, jnp.asarray(e.tokens[None]), jnp.array([e.answer_start + 3]))
    want.append([np.asarray(p[0, :, e.key_start + 3]) for p in rows])  # [layer][head]
  np.testing.assert_allclose(mass[3], np.mean(want, axis=0), atol=2e-3)  # copy_mass rounds to 3 decimals


def test_gather_reads_the_question_positions_attention_on_each_key_digit():
  from benchmarks import passkey_copy_heads  # pylint: disable=g-import-not-at-top
  from data import passkey as passkey_lib  # pylint: disable=g-import-not-at-top
  from eval import passkey as passkey_eval  # pylint: disable=g-import-not-at-top
  model, tok = _model("GL", window=(4, 0)), data.get_tokenizer()
  gathered = passkey_copy_heads.gather_mass(model, tok, 64, samples=1, window=3)
  assert list(gathered) == ["-2", "-1", "0"]
  # Two positions before the answer, digit 1, one prompt per depth.
  want = []
  for d in passkey_eval.DEPTHS:
    e = passkey_lib.passkey_example(tok, 64, d, passkey_eval.sample_seed(64, d, 0), "compact")
    rows = diag.layer_attention(model, jnp.asarray(e.tokens[None]), jnp.array([e.answer_start - 2]))
    want.append([np.asarray(p[0, :, e.key_start + 1]) for p in rows])  # [layer][head]
  np.testing.assert_allclose(np.asarray(gathered["-2"])[1], np.mean(want, axis=0), atol=2e-3)
  assert np.asarray(gathered["-2"])[1, 1].max() == 0.0  # the local layer cannot see the needle
