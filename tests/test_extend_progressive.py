"""configs/extend_progressive.py: 2K -> 8K -> 32K -> 128K, each stage restoring the previous one, with
YaRN factors relative to the original length or a per-stage RoPE-theta increase (ABF); every stage is
validated at full size; the chain 2k -> 8k -> 32k is dry-run (one step of its tiny form, restoring the
previous stage's run)."""

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


# The dry runs cover each transition kind: a fresh base (2k), a base restored into YaRN (8k), and a YaRN
# stage restored into a larger YaRN factor (32k). The 128k stage is the 32k stage's code at 4x the length
# (same init_from restore, remat, chunked loss); its full-size config is checked above.
DRY_RUN_STAGES = ("2k", "8k", "32k")


def test_stage_chain_dry_runs_restoring_the_previous(tmp_path):
  assert list(ep.STAGES)[:len(DRY_RUN_STAGES)] == list(DRY_RUN_STAGES)
  previous = ""
  for stage in DRY_RUN_STAGES:
    c = ep.get_config(f"{stage},yarn,tiny")  # abf differs only in rope_theta (checked above)
    c.mesh.data = 1
    c.data.num_val_batches = 1
    c.update(num_steps=1, eval_every=1, init_from=previous)
    c.optim.warmup_steps = 0
    c.checkpoint.every = 1
    previous = str(tmp_path / stage)
    assert train_and_evaluate(c, previous)["step"] == 1
