"""Unit tests of the trainer's pieces that need no training run: objectives' targets, MLM masking rates,
schedules, config validation, sharding rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import decoder_tiny
from data.tokenizer import ByteTokenizer
from training import from_config_dict, optim, sharding, step
from training.config import MeshConfig


def test_lm_targets_stop_at_document_boundaries():
  tokens = jnp.array([[10, 11, 12, 20, 21, 0]])
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  _, targets, weights = step.lm_targets({"tokens": tokens, "segment_ids": seg, "positions": seg})
  np.testing.assert_array_equal(targets[0, :4], [11, 12, 20, 21])
  # 12 -> 20 crosses documents, 21 -> pad and pad -> nothing are not targets.
  np.testing.assert_array_equal(weights[0], [1, 1, 0, 1, 0, 0])


def test_mlm_masking_rates_80_10_10():
  tok = ByteTokenizer()
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, size=(64, 512)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = tok.bos_id, tok.eos_id
  seg = np.ones_like(tokens)
  seg[:, -32:] = 0  # padding
  batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(seg)}
  inputs, targets, weights = step.mlm_targets(batch, jax.random.key(0), rate=0.3, mask_id=tok.mask_id,
                                              num_regular=256)
  inputs, weights = np.asarray(inputs["tokens"]), np.asarray(weights).astype(bool)
  np.testing.assert_array_equal(np.asarray(targets), tokens)
  assert not weights[:, 0].any() and not weights[:, -1].any() and not weights[seg == 0].any()
  eligible = (seg > 0) & (tokens < 256)
  assert abs(weights.sum() / eligible.sum() - 0.3) < 0.01
  sel_in, sel_orig = inputs[weights], tokens[weights]
  masked = np.mean(sel_in == tok.mask_id)
  kept = np.mean(sel_in == sel_orig)
  assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1 - 0.1 / 256) < 0.02
  assert abs(1 - masked - kept - 0.1) < 0.02  # random replacements
  np.testing.assert_array_equal(inputs[~weights], tokens[~weights])


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_schedules(kind):
  c = decoder_tiny.get_config()
  c.num_steps, c.optim.warmup_steps, c.optim.schedule = 100, 10, kind
  c.optim.learning_rate, c.optim.min_lr_ratio, c.optim.decay_fraction = 1.0, 0.1, 0.2
  s = optim.schedule(from_config_dict(c))
  lr = np.array([float(s(i)) for i in range(101)])
  assert lr[0] == 0 and abs(lr[10] - 1.0) < 1e-6 and np.all(np.diff(lr[:11]) > 0)
  if kind == "cosine":
    assert abs(lr[100] - 0.1) < 1e-6 and np.all(np.diff(lr[10:]) <= 1e-7)
  elif kind == "wsd":
    np.testing.assert_allclose(lr[10:81], 1.0)
    assert abs(lr[100] - 0.1) < 1e-6 and lr[90] < lr[80]
  else:
    np.testing.assert_allclose(lr[10:], 1.0)


def test_config_validation_names_the_key():
  c = decoder_tiny.get_config()
  c.optim.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r"config.optim.grad_accum_steps=3: must be >= 1 and divide"):
    from_config_dict(c)
  c = decoder_tiny.get_config().to_dict()
  c["num_steps"] = "many"
  with pytest.raises(ValueError, match="config.num_steps must be an int"):
    from_config_dict(c)
  c = decoder_tiny.get_config().to_dict()
  c["model"]["num_heads"] = 3
  with pytest.raises(ValueError, match="config.model: num_heads=3"):
    from_config_dict(c)
  cfg = from_config_dict(decoder_tiny.get_config())
  with pytest.raises(Exception):
    cfg.seed = 1  # frozen


def test_mesh_and_logical_rules():
  mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "context": 1}
  assert sharding.make_mesh(MeshConfig(data=-1, tensor=2)).shape["data"] == jax.device_count() // 2
  spec = sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), mesh)
  assert tuple(spec) == ("fsdp", "tensor", None)
  assert tuple(sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh)) == (
      "fsdp", None, None)  # one kv head cannot be split: replicated
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh(MeshConfig(data=4, fsdp=4))
  with pytest.raises(ValueError, match="unknown logical axis name 'rows'"):
    sharding.logical_to_spec(("rows",), (8,), mesh)


def test_dsa_dense_warmup_trains_only_the_indexer():
  """V3.2's warm-up freezes the main model: only q_idx/k_idx/w_idx parameters get updates."""
  from flax import nnx
  from models import build_model, is_indexer_param
  c = decoder_tiny.get_config("tiny")
  c.model.attention_pattern, c.model.dsa_phase = "D", "dense_warmup"
  cfg = from_config_dict(c)
  params = nnx.state(build_model(cfg.model, rngs=nnx.Rngs(0)), nnx.Param).to_pure_dict()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.optimizer(cfg)
  # The learning rate is 0 at step 0: take the second update, when the schedule is past zero.
  updates, _ = tx.update(grads, tx.update(grads, tx.init(params), params)[1], params)
  moved = {p: bool(jnp.any(u != 0)) for p, u in jax.tree_util.tree_leaves_with_path(updates)}
  indexer = {k: v for k, v in moved.items() if is_indexer_param(k)}
  assert indexer and all(indexer.values())
  assert not any(v for k, v in moved.items() if k not in indexer)
  c.model.dsa_phase = "sparse"  # the sparse phase trains everything
  tx = optim.optimizer(from_config_dict(c))
  updates, _ = tx.update(grads, tx.update(grads, tx.init(params), params)[1], params)
  assert all(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
