"""configs/extend_progressive.py: 2K -> 8K -> 32K -> 128K, each stage restoring the previous one, with
YaRN factors relative to the original length or a per-stage RoPE-theta increase (ABF); every stage is
validated at full size and dry-run (one step of its tiny form, restoring the previous stage's run)."""

import pytest

from configs import extend_progressive as ep
from training import from_config_dict, train_and_evaluate


@pytest.mark.parametrize("method", ep.METHODS)
def test_full_size_stages_chain_and_scale_rope(method):
  thetas = []
  for i, (stage, length) in enumerate(ep.STAGES.items()):
    cfg = from_config_dict(ep.get_config(f"{stage},{method}"))
    assert cfg.data.seq_len == cfg.model.max_len == length
    scaling = cfg.model.rope_scaling
    if i == 0:
      assert cfg.init_from == "" and scaling.kind == "none"
      continue
    assert cfg.init_from == ep.workdir(list(ep.STAGES)[i - 1], method)
    assert cfg.model.remat == "full" and cfg.loss_chunk_tokens == 8192
    if method == "yarn":  # the factor is relative to the original 2K, not to the previous stage
      assert (scaling.kind, scaling.factor, scaling.original_max_len) == ("yarn", length / ep.L0, ep.L0)
    else:
      assert scaling.kind == "none"
      thetas.append(cfg.model.rope_theta)
  assert thetas == sorted(set(thetas)) or method == "yarn"


def test_every_stage_dry_runs_restoring_the_previous(tmp_path):
  previous = ""
  for stage in ep.STAGES:
    c = ep.get_config(f"{stage},yarn,tiny")  # abf differs only in rope_theta (checked above)
    c.mesh.data = 1
    c.data.num_val_batches = 1
    c.update(num_steps=1, eval_every=1, init_from=previous)
    c.optim.warmup_steps = 0
    c.checkpoint.every = 1
    previous = str(tmp_path / stage)
    assert train_and_evaluate(c, previous)["step"] == 1
