"""Training with context parallelism: the trainer's mesh gets a context axis and attention becomes a ring."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import decoder_tiny
from training import train_and_evaluate


def _config(context: int, pattern: str = "LG"):
  c = decoder_tiny.get_config("tiny")
  c.model.attention_impl = "xla"
  c.model.attention_pattern = pattern
  c.mesh.update(data=-1, context=context)
  c.data.batch_size = 8
  c.update(num_steps=2, eval_every=2)
  return c


def _run(tmp_path, name, config):
  workdir = str(tmp_path / name)
  train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f]
  params = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "params"))
  return losses, jax.tree.leaves(params)


def test_train_steps_with_context_4_match_context_1(tmp_path):
  """Two optimizer steps of a local+global decoder: mesh (data=2, context=4) vs (data=8, context=1)."""
  losses1, params1 = _run(tmp_path, "context1", _config(1))
  losses4, params4 = _run(tmp_path, "context4", _config(4))
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  assert len(params1) == len(params4) > 0
  for a, b in zip(params4, params1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_dsa_decoder_trains_with_context_4_like_context_1(tmp_path):
  """A local + DSA decoder (top-16 of 128 keys, float32 indexer scores so no rounding tie flips), two
  steps: DSA gathers the indexer keys and K/V over the context axis and selects over all keys."""
  configs = []
  for context in (1, 4):
    c = _config(context, pattern="LD")
    c.model.update(dsa_top_k=16, dsa_score_dtype="float32")
    configs.append(c)
  losses1, params1 = _run(tmp_path, "dsa1", configs[0])
  losses4, params4 = _run(tmp_path, "dsa4", configs[1])
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  for a, b in zip(params4, params1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
