"""Tests for configs/extend.py and configs/extend_gpu.py: the extension stages restore the base run's params
from another workdir, switch RoPE scaling and train at 8x the length; mismatched shapes are refused with a
clear message; the GPU recipe's base and its longest YaRN stage run (at toy size) on the CPU."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import extend, extend_gpu
from training import restore, train_and_evaluate


def _tiny(arg, config=extend, **overrides):
  c = config.get_config(arg + ",tiny")
  c.model.attention_impl = "reference"
  c.mesh.data = 1
  c.update(num_steps=1, eval_every=1)
  c.optim.warmup_steps = 0
  c.checkpoint.every = 1
  c.update_from_flattened_dict(overrides)
  return c


def _params(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "params"))


def test_config_stages():
  base = extend.get_config("base")
  assert base.data.seq_len == base.model.max_len == extend.L0 and base.model.rope_scaling.kind == "none"
  assert base.data.mqar_rate > 0 and base.data.passkey_prompt == "compact"
  for rule in extend.RULES:
    c = extend.get_config(rule)
    assert c.data.seq_len == c.model.max_len == extend.FACTOR * extend.L0
    kind = "yarn" if rule == "yarn_notemp" else rule
    assert (c.model.rope_scaling.kind, c.model.rope_scaling.factor) == (kind, float(extend.FACTOR))
    assert c.model.rope_scaling.original_max_len == extend.L0 and c.init_from == extend.BASE_WORKDIR
    assert c.model.rope_scaling.attention_factor == (1.0 if rule == "yarn_notemp" else None)
  assert extend.get_config("yarn,local").model.attention_pattern == "GL"
  assert extend.get_config("yarn,dsa").model.dsa_top_k < extend.L0
  with pytest.raises(ValueError, match="bad argument 'cubic'"):
    extend.get_config("cubic")
  with pytest.raises(ValueError, match="bad argument 'yarn,huge'"):
    extend.get_config("yarn,huge")
  with pytest.raises(ValueError, match="bad argument 'dynamic_ntk'"):
    extend.get_config("dynamic_ntk")  # zero-shot only


def test_gpu_recipe_stages_dry_run(tmp_path):
  full = {s: extend_gpu.get_config(s) for s in extend_gpu.STAGES}
  assert [full[s].data.seq_len for s in ("base", "yarn16k", "yarn32k")] == [2048, 16384, 32768]
  assert full["yarn32k"].model.rope_scaling.factor == 16.0 and full["yarn16k"].model.rope_scaling.kind == "yarn"
  assert all(c.num_steps > 100 for c in full.values())
  # Dry runs: the base and the longest YaRN stage restoring it. yarn16k is the same code (a YaRN stage
  # restoring the base) at half the factor and length; its full-size config is checked above.
  base = str(tmp_path / "base")
  for stage in ("base", "yarn32k"):
    c = _tiny(stage, extend_gpu, **({} if stage == "base" else {"init_from": base}))
    assert train_and_evaluate(c, base if stage == "base" else str(tmp_path / stage))["step"] == 1


def test_extension_restores_base_params_and_refuses_other_shapes(tmp_path):
  base, ext = str(tmp_path / "base"), str(tmp_path / "yarn")
  train_and_evaluate(_tiny("base"), base)
  # A learning rate of ~0 makes the extension's one update a no-op: its params are the base's.
  result = train_and_evaluate(_tiny("yarn", init_from=base, **{"optim.learning_rate": 1e-12}), ext)
  assert result["step"] == 1
  # (Without init_from they would differ: the base took one real step away from the shared seed-0 init.)
  leaves = [jax.tree.leaves(_params(d, 1)) for d in (base, ext)]
  assert len(leaves[0]) == len(leaves[1]) > 0
  for a, b in zip(*leaves):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-9)
  r = restore.restore(ext)
  assert r.config.data.seq_len == 8 * 32 and r.config.init_from == base
  assert (r.model.cfg.rope_scaling.kind, r.model.cfg.rope_scaling.original_max_len) == ("yarn", 32)
  with pytest.raises(ValueError, match=r"init_from=.*tensor '.*mlp.*' has shape \(64, 128\) in the checkpoint but "
                                       r"\(64, 96\) in this model"):
    train_and_evaluate(_tiny("ntk", init_from=base, **{"model.mlp_dim": 96}), str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="no checkpoints directory"):
    train_and_evaluate(_tiny("ntk", init_from=str(tmp_path / "nowhere")), str(tmp_path / "bad2"))
