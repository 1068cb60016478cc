"""Resume: pick the checkpoint (the newest that restores completely, or config.resume_step), and compare
the config it was written under with the current one.

Changes that keep the run meaningful (how long it runs, how often it logs, evaluates and saves, the mesh,
how attention is computed) are logged. Changes to the data order or the model (seed, corpus content,
batch size, seq_len, model fields, optimizer hyper-parameters) refuse unless
config.allow_config_change=True, and are then recorded in metrics.jsonl.
"""

from __future__ import annotations

import logging
import os

import orbax.checkpoint as ocp

from training import checkpoint
from training.config import TrainConfig

_log = logging.getLogger(__name__)

# Flattened keys (or "section." prefixes) whose change keeps a resumed run meaningful.
SAFE_KEYS = ("num_steps", "max_steps_per_run", "log_every", "eval_every", "resume_step", "allow_config_change",
             "init_from", "max_consecutive_skips", "inject_nan_steps", "profile_start_step", "profile_num_steps",
             "peak_tflops_per_device", "checkpoint.", "mesh.", "data.loader_threads", "data.num_val_batches",
             "model.attention_impl", "model.remat", "loss_chunk_tokens")  # the last three: how, not what


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_changes(saved: dict, current: TrainConfig, *, same_data: bool | None) -> tuple[dict, dict]:
  """({key: (saved, now)} of safe changes, {key: (saved, now)} of changes that alter the run).

  `same_data`: whether the packed rows hash as the checkpoint's did (None: unknown). A corpus path that
  moved with the same rows is a safe change; rows that differ are a change even with the same paths.
  """
  old, new = _flatten(saved), _flatten(current.to_dict())
  changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
  safe = {k: v for k, v in changed.items()
          if any(k == s or (s.endswith(".") and k.startswith(s)) for s in SAFE_KEYS)
          or (k == "data.corpus" and same_data)}
  altering = {k: v for k, v in changed.items() if k not in safe}
  if same_data is False and (not altering or "data.corpus" in altering):  # else the changed keys explain it
    altering["data (packed rows)"] = ("as in the checkpoint", "different: the corpus content changed")
  return safe, altering


def _format(changes: dict) -> str:
  return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def resume(cfg: TrainConfig, workdir: str, mngr: ocp.CheckpointManager, like_state: dict,
           fingerprint: str) -> tuple[checkpoint.Resumed | None, dict]:
  """(what was restored or None for a fresh run, {key: (saved, now)} of the changes allowed by
  config.allow_config_change, to record in metrics.jsonl).

  Raises ValueError when config.resume_step is absent or damaged, when no checkpoint restores, or when
  the config changes the run without config.allow_config_change.
  """
  steps = sorted(mngr.all_steps())
  if not steps:
    if cfg.resume_step:
      raise ValueError(f"config.resume_step={cfg.resume_step}: {mngr.directory} has no checkpoint")
    return None, {}
  logged = {}

  def check(resumed: checkpoint.Resumed):
    same_data = None if resumed.fingerprint is None else resumed.fingerprint == fingerprint
    safe, altering = config_changes(resumed.config, cfg, same_data=same_data)
    where = f"checkpoint {resumed.step} of {workdir!r}"
    if altering and not cfg.allow_config_change:
      raise checkpoint.Refused(
          f"resuming {where} with a config that changes the data order or the model ({_format(altering)}); "
          "pass --config.allow_config_change=True to resume anyway, or use another --workdir")
    if safe:
      _log.info("resume from %s: config changes %s", where, _format(safe))
    if altering:
      _log.warning("resume from %s with config.allow_config_change: %s", where, _format(altering))
    logged.clear()
    logged.update(altering)

  def restore(step: int) -> checkpoint.Resumed:
    logged.clear()
    try:
      return checkpoint.restore(mngr, step, like_state, check)
    except (checkpoint.Refused, checkpoint.DamagedCheckpointError):  # the latter already names its file
      raise
    except Exception as e:
      model = [k for k in logged if k.startswith("model.")]
      if model:  # allowed, but the saved arrays cannot take the new model's shapes: not damage
        cause = checkpoint.diagnose(os.path.join(str(mngr.directory), str(step)), step, e).cause
        raise checkpoint.Refused(f"checkpoint {step} of {workdir!r} cannot be resumed with the changed model "
                                 f"({', '.join(model)}): {cause}") from None
      raise

  step, restored = checkpoint.first_restorable(str(mngr.directory), steps, cfg.resume_step, restore,
                                               what="config.resume_step")
  later = [s for s in steps if s > step]
  if later:
    moved = checkpoint.set_aside(workdir, str(mngr.directory), later)
    mngr.reload()
    _log.warning("resumed from step %d: the later checkpoints %s were moved to %s", step, later,
                 os.path.dirname(moved[0]))
  return restored, logged
