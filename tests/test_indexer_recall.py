"""eval/indexer_recall.py against a brute-force top-k: numpy scores of the layer's own indexer outputs over
every visible key, sorted, and the same hit counts."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import data
from data import mqar as mqar_lib
from eval import indexer_recall as ir
from eval import mqar as mqar_eval
from eval import passkey as passkey_eval
from models import build_model, presets


def _model(pattern, **kw):
  cfg = presets.get("decoder_tiny").replace(vocab_size=272, num_layers=len(pattern), attention_pattern=pattern,
                                            smeared_keys=True, dsa_index_heads=2, dsa_index_dim=8, dsa_rope_dim=4,
                                            dsa_score_dtype="float32", max_len=256, **kw)
  return build_model(cfg, rngs=nnx.Rngs(3))


def _brute_force_topk(model, tokens, top_k):
  """Per DSA layer, int [E, T, top_k]: the top_k highest-scoring visible keys, ties to the lower index."""
  tokens = jnp.asarray(tokens)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  x, out = model.embed(tokens), []
  for block in model.blocks:
    if block.attn.layer_type.name == "DSA":
      q, k, w = (np.asarray(a, np.float64) for a in block.attn._indexer(block._pre(x), positions)[:3])
      s = np.einsum("eth,eths->ets", w, np.maximum(np.einsum("ethd,esd->eths", q, k), 0))  # [E, T, S]
      t = s.shape[1]
      s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
      out.append(np.argsort(-s, axis=-1, kind="stable")[..., :top_k])
    x, _ = block(x, positions)
  return out


def test_recall_matches_brute_force_topk():
  tok, n, top_k = data.get_tokenizer(), 128, 40
  model = _model("DG", dsa_top_k=top_k)
  res = ir.indexer_recall(model, tok, [n], mqar_samples=3, passkey_samples=1, batch_tokens=2 * n)
  exs = [mqar_lib.mqar_example(tok, n, mqar_eval.sample_seed(n, s)) for s in range(3)]
  (idx,) = _brute_force_topk(model, np.stack([e.tokens for e in exs]), top_k)
  value = [int(q - g + 1) in set(idx[i, q]) for i, e in enumerate(exs) for q, g in zip(e.query_positions, e.gaps)]
  key = [int(q - g) in set(idx[i, q]) for i, e in enumerate(exs) for q, g in zip(e.query_positions, e.gaps)]
  assert res["lengths"] == [n] and res["layers"] == [0] and res["top_k"] == top_k
  assert res["mqar_value"] == [[pytest.approx(np.mean(value))]]
  assert res["mqar_key"] == [[pytest.approx(np.mean(key))]]
  assert 0.0 < np.mean(value) < 1.0  # top_k < length: the measurement can miss
  by_gap = res["mqar_value_by_gap"][0][0]
  assert len(by_gap) == 4 and all(b is None or 0.0 <= b <= 1.0 for b in by_gap)

  pk = [data.passkey_example(tok, n, d, seed=passkey_eval.sample_seed(n, d, 0), prompt="compact")
        for d in passkey_eval.DEPTHS]
  (idx,) = _brute_force_topk(model, np.stack([e.tokens for e in pk]), top_k)
  want = []  # [prompt][digit]: the needle's digit i in the top-k of the position that predicts it
  for i, e in enumerate(pk):
    first = e.needle_start + e.tokens[e.needle_start:].tolist().index(e.tokens[e.answer_start + 1])
    assert e.tokens[first:first + 5].tolist() == e.tokens[e.answer_start + 1:e.answer_start + 6].tolist()
    want.append([first + d in set(idx[i, e.answer_start + d]) for d in range(5)])
  want = np.array(want)
  assert res["passkey_digit"] == [[pytest.approx(want[:, 0].mean())]]
  assert res["passkey_digits_2_5"] == [[pytest.approx(want[:, 1:].mean())]]


def test_top_k_over_the_length_keeps_every_key_and_plain_models_are_refused():
  tok = data.get_tokenizer()
  res = ir.indexer_recall(_model("DG", dsa_top_k=256), tok, [64], mqar_samples=2, passkey_samples=1)
  assert res["mqar_value"] == res["mqar_key"] == [[1.0]]
  with pytest.raises(ValueError, match="DSA layers"):
    ir.indexer_recall(_model("GG"), tok, [64])
