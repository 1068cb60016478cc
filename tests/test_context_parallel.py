"""Training with context parallelism: the trainer's mesh gets a context axis and attention becomes a ring."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import decoder_tiny
from training import train_and_evaluate


def _config(context: int):
  """A local + global + DSA decoder (one layer each; DSA top-16 with float32 indexer scores, so no rounding
  tie flips), two optimizer steps on a (data, context) mesh."""
  c = decoder_tiny.get_config("tiny")
  c.model.attention_impl = "xla"
  c.model.update(num_layers=3, attention_pattern="LGD", dsa_top_k=16, dsa_score_dtype="float32")
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
  """Mesh (data=2, context=4) vs (data=8, context=1): the local and global layers' attention becomes a ring,
  the DSA layer gathers the indexer keys and K/V over the context axis and selects over all keys. One
  model with all three layer kinds (formerly an LG and an LD decoder trained separately: the same checks
  with half the runs)."""
  losses1, params1 = _run(tmp_path, "context1", _config(1))
  losses4, params4 = _run(tmp_path, "context4", _config(4))
  assert len(losses1) == 2
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  assert len(params1) == len(params4) > 0
  for a, b in zip(params4, params1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
