"""Tests for the retrieval tasks: data/mqar.py and the compact passkey prompt (deterministic by seed, the
layout the scorer relies on, MQAR gaps uniform over the row), their mixing into training rows, and
eval/mqar.py's scoring (equal to greedy decoding)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import data
import models
from data import mqar, passkey, pipeline
from eval import mqar as mqar_eval
from eval import passkey as passkey_eval
from eval import perplexity


def test_mqar_rows_are_deterministic_and_well_formed():
  tok = data.get_tokenizer()
  a, b, c = (mqar.mqar_example(tok, 256, s) for s in (5, 5, 6))
  assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)
  assert a.tokens.shape == (256,) and a.tokens[0] == tok.bos_id
  assert len(a.query_positions) == mqar.num_pairs(256) == 16 and mqar.num_pairs(1024) == 64
  keys, values = a.tokens[a.query_positions], a.tokens[a.answer_positions]
  assert np.array_equal(values, a.values) and len(set(keys.tolist())) == len(keys)
  assert np.all((keys >= 128) & (keys < 192)) and np.all((values >= 192) & (values < 256))
  # Each key appears exactly twice: its definition, then its query `gap` tokens later, with the same value.
  for q, g, v in zip(a.query_positions, a.gaps, a.values):
    assert g > 0 and a.tokens[q - g] == a.tokens[q] and a.tokens[q - g + 1] == v
    assert np.sum(a.tokens == a.tokens[q]) == 2
  assert np.all(np.diff(a.query_positions) > 0)
  rest = np.delete(a.tokens[1:], np.concatenate([a.query_positions, a.answer_positions,
                                                 a.query_positions - a.gaps, a.answer_positions - a.gaps]) - 1)
  assert np.all((rest >= ord("a")) & (rest <= ord("z")))  # everything else is filler
  with pytest.raises(ValueError, match="overlap"):
    mqar.mqar_example(tok, 256, 0, value_base=150)
  with pytest.raises(ValueError, match="too few"):
    mqar.mqar_example(tok, 64, 0, pairs=16)


def _ks_uniform(gaps: np.ndarray, slots: int) -> float:
  """Kolmogorov-Smirnov distance between gaps (in slots, 1..slots-1) and the uniform law on them."""
  g = np.sort(gaps)
  support = np.arange(1, slots)
  empirical = np.searchsorted(g, support, side="right") / g.size
  return float(np.max(np.abs(empirical - support / (slots - 1))))


def test_mqar_gaps_are_uniform_over_the_row_unlike_zoology():
  tok, n = data.get_tokenizer(), 512
  slots = (n - 1) // 2
  gaps = np.concatenate([mqar.mqar_example(tok, n, s).gaps for s in range(150)]) // 2  # 4,800 gaps
  # 1.36 / sqrt(N) is the 5% critical value of the KS distance; 2x leaves room for the redraws' slight bias.
  bound = 2 * 1.36 / np.sqrt(gaps.size)
  assert _ks_uniform(gaps, slots) < bound
  # Zoology's multiquery_ar puts all pairs first and draws each query's slot with probability
  # proportional to power_a * x^(power_a - 1) (power_a = 0.01) over the rest: mostly short gaps.
  rng = np.random.default_rng(0)
  pairs = mqar.num_pairs(n)
  zoo = []
  for _ in range(150):
    space = np.arange(slots - pairs)
    p = 0.01 * (space + 1.0) ** (0.01 - 1)
    q = pairs + rng.choice(space, pairs, replace=False, p=p / p.sum())
    zoo.append(q - rng.permutation(pairs))
  assert _ks_uniform(np.concatenate(zoo), slots) > 5 * bound


def test_compact_passkey_prompt():
  tok = data.get_tokenizer()
  a, b = (passkey.passkey_example(tok, 128, 0.5, 11, "compact") for _ in range(2))
  assert np.array_equal(a.tokens, b.tokens) and a.tokens.size == 128
  assert len(set(a.key)) == 5 and a.key.isdigit()
  assert tok.decode(a.tokens[a.answer_start:a.answer_start + a.answer_len]) == " " + a.key
  assert f"The pass key is {a.key}." in tok.decode(a.tokens[a.needle_start:a.needle_start + a.needle_len])
  assert passkey_eval.min_length(tok, "compact") < 64 < passkey_eval.min_length(tok, "landmark") == 254
  with pytest.raises(ValueError, match="prompt must be one of"):
    passkey.passkey_example(tok, 128, 0.5, 0, "long")


def test_mixing_mqar_and_passkey_rows_into_training_batches():
  tok = data.get_tokenizer()
  rows = {k: np.full((4, 128), 7 if k == "tokens" else 1, np.int32) for k in pipeline.ROW_KEYS}
  make = lambda seed: pipeline.train_dataset(rows, tok, batch_size=8, seed=seed, passkey_rate=0.25,
                                             passkey_prompt="compact", mqar_rate=0.5)
  batches = [make(0)[i]["tokens"] for i in range(4)]
  assert all(np.array_equal(x, make(0)[i]["tokens"]) for i, x in enumerate(batches))
  flat = np.concatenate(batches)
  is_text = np.all(flat == 7, axis=1)
  is_mqar = np.any((flat >= 128) & (flat < 256), axis=1)
  is_passkey = ~is_text & ~is_mqar
  assert all(tok.decode(r).startswith("") and "The pass key is" in tok.decode(r) for r in flat[is_passkey])
  assert 4 <= is_mqar.sum() <= 28 and 1 <= is_passkey.sum() and 1 <= is_text.sum()
  # With episodes, retrieval rows hold several segments; passkey episodes are long enough for a prompt.
  ds = pipeline.train_dataset(rows, tok, batch_size=8, seed=0, passkey_rate=0.25, passkey_prompt="compact",
                              mqar_rate=0.5, episode_min_len=16)
  batch = ds[0]
  segments = batch["segment_ids"].max(axis=1)
  assert segments.max() > 1 and np.all(batch["segment_ids"] > 0)
  for r, seg in zip(batch["tokens"], batch["segment_ids"]):
    if "pass key" in tok.decode(r):
      assert np.bincount(seg)[1:].min() >= passkey.min_length(tok, "compact")
  with pytest.raises(ValueError, match="sum <= 1"):
    pipeline.train_dataset(rows, tok, batch_size=8, seed=0, passkey_rate=0.6, mqar_rate=0.6)


def test_mqar_scoring_equals_greedy_decoding():
  cfg = models.presets.get("decoder_tiny").replace(vocab_size=272, max_len=256, attention_impl="reference")
  model, tok = models.build_model(cfg, rngs=nnx.Rngs(0)), data.get_tokenizer()
  ex = mqar.mqar_example(tok, 128, 3)
  score = perplexity.make_scorer(model)
  # Greedy decoding of one token after a query's key, given the row up to that key; the scorer calls the
  # query correct exactly when that token is the answer in the row.
  for i in (len(ex.query_positions) - 1,):
    q = ex.query_positions[i]
    greedy = int(np.asarray(models.generate(model, [ex.tokens[:q + 1].tolist()], max_new_tokens=1))[0, 0])
    for answer, expected in ((greedy, True), ((greedy + 1) % 256, False)):
      tokens = ex.tokens.copy()
      tokens[q + 1] = answer
      one = mqar.MqarExample(tokens=tokens, query_positions=ex.query_positions[i:i + 1], gaps=ex.gaps[i:i + 1],
                             values=np.array([answer], np.int32))
      assert mqar_eval.score_rows(score, [one])[0, 0] == expected
  res = mqar_eval.mqar_accuracy(model, tok, [4, 128, 256], samples=2, gap_buckets=2)
  assert res["lengths"] == [128, 256] and res["skipped_lengths"] == [4] and res["pairs"] == [8, 16]
  assert len(res["by_gap"][1]) == 2 and all(0 <= a <= 1 for a in res["accuracy"])



def test_episode_rows_pack_mixed_lengths():
  tok = data.get_tokenizer()
  from data import retrieval
  row = retrieval.episodes_row(lambda n, s: mqar.mqar_example(tok, n, s).tokens, tok, 256, seed=4, min_len=16)
  again = retrieval.episodes_row(lambda n, s: mqar.mqar_example(tok, n, s).tokens, tok, 256, seed=4, min_len=16)
  assert all(np.array_equal(row[k], again[k]) for k in row)
  seg = row["segment_ids"]
  lengths = np.bincount(seg)[1:]
  assert lengths.sum() == 256 and lengths.min() >= 16 and len(lengths) > 1
  starts = np.flatnonzero(np.diff(seg, prepend=0))
  assert np.all(row["tokens"][starts] == tok.bos_id) and np.all(row["positions"][starts] == 0)
  with pytest.raises(ValueError, match="min_len"):
    retrieval.episode_lengths(256, 1, np.random.default_rng(0))


def test_mqar_answers_only_loss_weights_mark_exactly_the_answers():
  from data import retrieval
  from training.targets import lm_targets
  tok = data.get_tokenizer()
  ex = mqar.mqar_example(tok, 128, 2)
  assert np.array_equal(np.flatnonzero(ex.answer_weights()), ex.query_positions)
  rows = {k: np.full((4, 128), 7 if k == "tokens" else 1, np.int32) for k in pipeline.ROW_KEYS}
  for episodes in (0, 16):
    make = lambda loss: pipeline.train_dataset(rows, tok, batch_size=16, seed=1, passkey_rate=0.25,
                                               passkey_prompt="compact", mqar_rate=0.5, episode_min_len=episodes,
                                               mqar_loss=loss)
    plain, weighted = make("all")[0], make("answers")[0]
    assert "loss_weights" not in plain and all(np.array_equal(plain[k], weighted[k]) for k in plain)
    w, t = weighted["loss_weights"], weighted["tokens"]
    is_mqar = np.any((t >= 128) & (t < 256), axis=1)
    is_text = np.all(t == 7, axis=1)
    is_passkey = ~is_mqar & ~is_text
    assert is_mqar.any() and is_text.any() and is_passkey.any() and np.all(w[is_text] == 1)
    for tr, seg, wr in zip(t[is_passkey], weighted["segment_ids"][is_passkey], w[is_passkey]):
      # Passkey: every token, and the 6 answer targets (" " + 5 digits, just before EOS) weigh the episode again.
      assert np.all(wr[seg > 0] >= 1)
      for d in np.unique(seg[seg > 0]):
        ep_t, ep_w = tr[seg == d], wr[seg == d]
        heavy = np.flatnonzero(ep_w > 1)
        assert heavy.size == 6 and np.all((ep_t[heavy + 1] == ord(" ")) | np.isin(ep_t[heavy + 1], list(b"0123456789")))
        np.testing.assert_allclose(ep_w.sum(), 2 * ep_t.size, rtol=1e-6)
    for tr, seg, wr in zip(t[is_mqar], weighted["segment_ids"][is_mqar], w[is_mqar]):
      idx = np.flatnonzero(wr)
      # Every weighted position is a key whose next token is a value, and every query is weighted.
      assert 0 < idx.size <= 8 and np.all((tr[idx] >= 128) & (tr[idx] < 192)) and np.all(tr[idx + 1] >= 192)
      assert np.all(seg[idx] == seg[idx + 1])
      assert idx.size == sum(mqar.num_pairs(n) for n in np.bincount(seg)[1:])
      for d in np.unique(seg[idx]):  # each episode's answers together weigh its length
        np.testing.assert_allclose(wr[seg == d].sum(), np.sum(seg == d), rtol=1e-6)
    _, _, lw = lm_targets({k: jnp.asarray(v) for k, v in weighted.items()})
    _, _, full = lm_targets({k: jnp.asarray(v) for k, v in plain.items()})
    assert np.array_equal(np.asarray(lw), np.asarray(full) * w)
  with pytest.raises(ValueError, match="mqar_loss"):
    pipeline.train_dataset(rows, tok, batch_size=8, seed=0, mqar_loss="answer")
  row = retrieval.episodes_row(lambda n, s: (np.full(n, 5, np.int32), np.ones(n, np.float32)), tok, 64, 0, 16,
                               weighted=True)
  assert row["loss_weights"].shape == (64,) and row["loss_weights"].sum() == 64


def test_passkey_whole_rate_makes_that_share_of_passkey_rows_one_prompt():
  tok = data.get_tokenizer()
  rows = {k: np.full((8, 256), 7 if k == "tokens" else 1, np.int32) for k in pipeline.ROW_KEYS}
  make = lambda rate: pipeline.train_dataset(rows, tok, batch_size=64, seed=3, passkey_rate=1.0,
                                             passkey_prompt="compact", episode_min_len=32, passkey_whole_rate=rate)
  whole = lambda batch: batch["segment_ids"].max(axis=1) == 1  # one episode: the whole row
  plain, half, every = (make(r)[0] for r in (0.0, 0.5, 1.0))
  assert np.array_equal(make(0.0)[0]["tokens"], plain["tokens"])
  assert whole(every).all() and all("pass key" in tok.decode(r) for r in every["tokens"])
  # Packs of doublings 32..256 are one whole episode about 1 time in 4; the rate adds half of the rest.
  assert 0.05 < whole(plain).mean() < 0.45 and whole(plain).mean() + 0.2 < whole(half).mean() < 0.9
  with pytest.raises(ValueError, match="passkey_whole_rate"):
    make(1.5)
