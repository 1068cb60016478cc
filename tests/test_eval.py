"""Tests for eval/: restoring train.py checkpoints (reproducing the logged validation loss, any step, any
device count), overrides and their errors, the perplexity / passkey / MLM tasks, and the CLI's errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import data
import models
from configs import decoder_tiny, encoder_tiny
from eval import mlm, passkey, perplexity
from eval.evaluate import evaluate, summary
from training import from_config_dict, restore, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny decoder trained 4 steps on 8 devices (data-parallel), checkpoints and val_loss at 2 and 4."""
  c = decoder_tiny.get_config("tiny")
  c.model.attention_impl = "reference"
  c.update(num_steps=4, eval_every=2)
  c.checkpoint.update(every=2, max_to_keep=3)
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = {m["step"]: m["val_loss"] for m in map(json.loads, f) if "val_loss" in m}
  return workdir, logged


def test_restore_reproduces_logged_val_loss_at_every_step_on_one_device(run):
  workdir, logged = run
  assert sorted(logged) == [2, 4] and jax.device_count() == 8
  tok = data.get_tokenizer()
  for step in (2, 4, None):
    r = restore.restore(workdir, step)
    assert r.step == (step or 4)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(nnx.state(r.model, nnx.Param)))
    val = perplexity.validation_loss(r.model, r.config, tok)
    np.testing.assert_allclose(val, logged[r.step], rtol=2e-5)
  assert logged[2] != logged[4]


def test_overrides_rebuild_the_model_and_bad_ones_fail(run):
  workdir, _ = run
  r = restore.restore(workdir, overrides=restore.parse_overrides(
      ["--config.model.rope_scaling.kind=yarn", "--config.model.rope_scaling.factor=4",
       "--config.model.rope_scaling.original_max_len=32", "--config.model.attention_impl=xla"]), min_max_len=512)
  assert r.model.cfg.rope_scaling.kind == "yarn" and r.model.cfg.rope_scaling.factor == 4.0
  assert r.model.cfg.attention_impl == "xla" and r.model.cfg.max_len == 512
  plain = restore.restore(workdir)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 64)), jnp.int32)
  assert not np.allclose(r.model(tokens), plain.model(tokens), atol=1e-4)  # YaRN changes every layer's RoPE
  with pytest.raises(ValueError, match="no key 'model.bogus'"):
    restore.restore(workdir, overrides={"model.bogus": 1})
  with pytest.raises(ValueError, match="RopeScaling.kind"):
    restore.restore(workdir, overrides={"model.rope_scaling.kind": "cubic"})
  with pytest.raises(ValueError, match="mlp_dim|shape"):
    restore.restore(workdir, overrides={"model.mlp_dim": 96})
  with pytest.raises(ValueError, match=r"step=3 is not a checkpoint .* steps \[2, 4\]"):
    restore.restore(workdir, 3)
  with pytest.raises(ValueError, match="must look like"):
    restore.parse_overrides(["--config.model.max_len"])


def test_a_checkpoint_saved_before_a_model_field_existed_restores_with_its_default(run, monkeypatch):
  workdir, _ = run
  read = restore._read_step

  def without_the_field(mngr, step):  # the saved config of a checkpoint written before logn_attention existed
    saved, params = read(mngr, step)
    del saved["model"]["logn_attention"]
    return saved, params

  monkeypatch.setattr(restore, "_read_step", without_the_field)
  assert restore.restore(workdir).model.cfg.logn_attention == 0
  r = restore.restore(workdir, overrides={"model.logn_attention": 16}, min_max_len=64)
  assert r.model.cfg.logn_attention == 16
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 64)), jnp.int32)
  plain = restore.restore(workdir, min_max_len=64).model
  np.testing.assert_allclose(r.model(tokens)[:, :16], plain(tokens)[:, :16], rtol=1e-5, atol=1e-5)
  assert not np.allclose(r.model(tokens)[:, 16:], plain(tokens)[:, 16:], atol=1e-4)


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no checkpoints directory"):
    restore.restore(str(tmp_path))
  os.makedirs(tmp_path / "checkpoints")
  with pytest.raises(ValueError, match="no complete checkpoint"):
    restore.restore(str(tmp_path))
  # The CLI turns it into one line and a non-zero exit status.
  out = subprocess.run([sys.executable, "-m", "eval", f"--workdir={tmp_path / 'missing'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "error: workdir=" in out.stderr and "has no checkpoints directory" in out.stderr
  out = subprocess.run([sys.executable, "-m", "eval", f"--workdir={tmp_path}", "--passkey_depths=0.5,abc"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip() == ("error: --passkey_depths=0.5,abc: must be comma-separated "
                                                        "floats")


def test_evaluate_writes_json_and_plots(run):
  workdir, _ = run
  res = evaluate(workdir, tasks=["perplexity", "passkey"], lengths=[64, 128, 256], tag="t", ppl_documents=2,
                 passkey_samples=2, passkey_depths=(0.0, 1.0))
  out = os.path.join(workdir, "eval", "4", "t")
  assert sorted(os.listdir(out)) == ["passkey.json", "passkey.png", "perplexity.json", "perplexity.png"]
  p = res["perplexity"]
  assert p["lengths"] == [64, 128, 256] and len(set(p["tokens"])) > 1
  # The same tokens are scored at every length: 255 targets per 256 tokens, one fewer per extra window.
  assert p["tokens"] == [p["documents"] * (256 - 256 // n) for n in (64, 128, 256)]
  # Byte tokenizer: one byte per scored token, so bits per byte is log2(perplexity).
  np.testing.assert_allclose(p["bits_per_byte"], np.log2(p["perplexity"]), rtol=1e-9)
  text = summary(res).splitlines()
  assert text[0].startswith("validation loss ") and "packed validation rows" in text[0]
  assert text[1].startswith(f"perplexity over {p['documents']} x 256 held-out tokens")
  k = res["passkey"]
  assert k["lengths"] == [256] and k["skipped_lengths"] == [64, 128]
  assert np.asarray(k["accuracy"]).shape == (1, 2)
  with pytest.raises(ValueError, match="unknown task"):
    evaluate(workdir, tasks=["bleu"])
  with pytest.raises(ValueError, match="must divide the longest"):
    evaluate(workdir, tasks=["perplexity"], lengths=[48, 64])
  with pytest.raises(ValueError, match="needs an encoder"):
    evaluate(workdir, tasks=["mlm"], lengths=[64])


def _tiny_decoder(seed=0):
  cfg = models.presets.get("decoder_tiny").replace(vocab_size=272, max_len=512, attention_impl="reference")
  return models.build_model(cfg, rngs=nnx.Rngs(seed))


def test_passkey_scoring_equals_greedy_decoding():
  model, tok = _tiny_decoder(), data.get_tokenizer()
  ex = data.passkey_example(tok, 300, 0.5, seed=3)
  prompt = ex.tokens[:ex.answer_start]
  greedy = np.asarray(models.generate(model, [prompt.tolist()], max_new_tokens=ex.answer_len))[0]
  score = perplexity.make_scorer(model)
  with_answer = lambda answer: type(ex)(**{**ex.__dict__, "tokens": np.concatenate(
      [prompt, answer, ex.tokens[ex.answer_start + ex.answer_len:]]).astype(np.int32)})
  # Scoring the greedy continuation as the answer is an exact match; changing any token of it is not.
  correct, _, predicted = passkey.score_examples(score, [with_answer(greedy)])
  assert correct[0] and predicted[0] == bytes(int(t) for t in greedy if t < 256).decode("utf-8", "replace")
  for i in (0, ex.answer_len - 1):
    wrong = greedy.copy()
    wrong[i] = (wrong[i] + 1) % 256
    assert not passkey.score_examples(score, [with_answer(wrong)])[0][0]
  # And the real key is matched exactly when greedy decoding would produce it.
  key_tokens = ex.tokens[ex.answer_start:ex.answer_start + ex.answer_len]
  assert passkey.score_examples(score, [ex])[0][0] == np.array_equal(greedy, key_tokens)


def test_passkey_grid_uses_fixed_keys_and_realised_depths():
  model, tok = _tiny_decoder(), data.get_tokenizer()
  a = passkey.passkey_grid(model, tok, [256, 300], depths=(0.0, 0.5, 1.0), samples=2)
  b = passkey.passkey_grid(model, tok, [300, 256], depths=(0.0, 0.5, 1.0), samples=2)
  assert a["examples"] == b["examples"] and a["lengths"] == [256, 300]
  keys = [e["key"] for e in a["examples"]]
  assert len(set(keys)) == len(keys)  # a different key in every cell and sample
  at_300 = [e for e in a["examples"] if e["length"] == 300]
  depths = [e["realised_depth"] for e in at_300]
  assert depths == sorted(depths) and depths[0] == 0.0 < depths[-1]
  with pytest.raises(ValueError, match="shorter than a passkey prompt"):
    passkey.passkey_grid(model, tok, [128])


def test_mlm_accuracy_on_an_encoder():
  c = encoder_tiny.get_config("tiny")
  c.model.attention_impl = "reference"
  cfg = from_config_dict(c)
  model, tok = models.build_model(cfg.model, rngs=nnx.Rngs(0)), data.get_tokenizer()
  res = mlm.mlm_accuracy(model, cfg, tok, [32, 64], max_rows=4)
  assert res["lengths"] == [32, 64]
  for n, count, acc, loss in zip(res["lengths"], res["masked_tokens"], res["accuracy"], res["loss"]):
    assert 0.15 * 4 * n < count < 0.45 * 4 * n  # ~30% of the tokens are selected
    assert 0.0 <= acc < 0.2 and loss > 4.0  # an untrained encoder: near-uniform over 272 ids
  with pytest.raises(ValueError, match="needs a decoder"):
    perplexity.perplexity_vs_length(model, cfg, tok, [32])
