"""Orbax checkpoints: async saves, automatic resume, restore onto any mesh, params-only init from a run.

A checkpoint step holds four items: "params" (float32 master weights), "train_state" (optimizer state,
step, RNG key data, NaN-guard counters), "data" (the grain iterator state, JSON) and "config" (the frozen
TrainConfig, JSON). Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves only finished steps visible; leftover temporaries are removed on start.
Restoring goes through an abstract state (ShapeDtypeStruct + sharding for the *current* mesh), so a
checkpoint written on 8 devices loads on 1 and vice versa. Every step this module saves is sealed with a
checksum manifest (training/checksums.py) once Orbax has finalized it, and checked before it is restored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from training import checksums
from training.config import TrainConfig

_log = logging.getLogger(__name__)

ITEMS = ("params", "train_state", "data", "config")


class Manager(ocp.CheckpointManager):
  """A CheckpointManager that seals every step it saves with a checksum manifest once Orbax has finalized it.

  Orbax finalizes an async save in a background thread (and renames the step directory there), so the seal
  waits for wait_until_finished(): Orbax calls it at the start of the next save, before that save may delete
  old steps, and close() calls it too. Only process 0 writes the manifest; by then every process's files are
  committed (Orbax's finalize ends with a barrier across processes).
  """

  def __init__(self, *args, **kwargs):
    self._unsealed = []  # set first: the base __init__ may already wait
    super().__init__(*args, **kwargs)

  def save(self, step: int, *args, **kwargs) -> bool:
    saved = super().save(step, *args, **kwargs)
    if saved:
      self._unsealed.append(step)
    return saved

  def wait_until_finished(self):
    super().wait_until_finished()
    while self._unsealed:
      step_dir = os.path.join(str(self.directory), str(self._unsealed.pop(0)))
      if jax.process_index() == 0 and os.path.isdir(step_dir):
        checksums.seal(step_dir)


def manager(workdir: str, config: TrainConfig) -> Manager:
  """The CheckpointManager of `workdir`/checkpoints (saves only where the caller asks; see should_save)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint.max_to_keep, enable_async_checkpointing=config.checkpoint.async_save,
      cleanup_tmp_directories=True, create=True)
  return Manager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, state: dict, data_state: dict, config: TrainConfig, fingerprint: str):
  """Start an (async) save of `state` at its step; returns once device buffers are copied.

  The data item holds the iterator state and the data fingerprint (a hash of the packed rows), so a resume
  can tell a moved corpus (same rows) from a changed one."""
  step = int(jax.device_get(state["step"]))
  rest = {k: v for k, v in state.items() if k != "params"}
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state["params"]), train_state=ocp.args.StandardSave(rest),
      data=ocp.args.JsonSave({"iterator": data_state, "fingerprint": fingerprint}),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


def abstract(tree):
  """ShapeDtypeStructs carrying each array's current sharding: the restore target for this mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@dataclasses.dataclass(frozen=True)
class Resumed:
  """What a resume restored from checkpoint `step`."""

  step: int
  state: dict
  data_state: dict  # the grain iterator state
  fingerprint: str | None  # None for checkpoints written before fingerprints were saved
  config: dict  # the TrainConfig dict the checkpoint was written under


class Refused(ValueError):
  """A checkpoint that restores but must not be resumed as asked (e.g. the config changed): not damage."""


def restore(mngr: ocp.CheckpointManager, step: int, like_state: dict, check=None) -> Resumed:
  """Checkpoint `step` with its state laid out like `like_state`.

  `check(resumed)`, if given, sees the JSON items (config, data) before any array is read, so a refusal
  (checkpoint.Refused) costs nothing and is not mistaken for damage by a model change's shape mismatch.
  """
  verify(str(mngr.directory), step, ("data", "config"))
  meta = mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
  data = meta.data if "iterator" in meta.data else {"iterator": meta.data}  # older checkpoints: the state alone
  resumed = Resumed(step, {}, data["iterator"], data.get("fingerprint"), meta.config)
  if check is not None:
    check(resumed)
  verify(str(mngr.directory), step, ("params", "train_state"), log=False)
  target = abstract(like_state)
  rest = {k: v for k, v in target.items() if k != "params"}
  out = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target["params"]), train_state=ocp.args.StandardRestore(rest)))
  check_finite(str(mngr.directory), step, out.params)
  return dataclasses.replace(resumed, state=dict(out.train_state, params=out.params))


class DamagedCheckpointError(ValueError):
  """A checkpoint step that does not restore: names the step, the file and the cause."""

  def __init__(self, step: int, file: str, cause: str):
    super().__init__(f"checkpoint {step} is damaged: {file}: {cause}")
    self.step, self.file, self.cause = step, file, cause


def verify(directory: str, step: int, items, *, log: bool = True):
  """Check the files of `items` of checkpoint `step` (under `directory`) against its checksum manifest.

  Raises DamagedCheckpointError naming the file that differs. A step without a manifest restores
  unverified, said in one warning (unless `log` is False: a second check of the same step).
  """
  step_dir = os.path.join(directory, str(step))
  try:
    sealed = checksums.verify(step_dir, items)
  except checksums.Mismatch as e:
    raise DamagedCheckpointError(step, e.path, e.cause) from None
  if not sealed and log:
    _log.warning("checkpoint %d has no %s (written before checksums, or the run stopped before sealing it): "
                 "restoring it unverified", step, os.path.join(step_dir, checksums.MANIFEST))


def check_finite(directory: str, step: int, params):
  """Raise DamagedCheckpointError when a restored parameter holds NaN or inf: the NaN guard keeps such
  weights out of every checkpoint train.py writes, so they mean damage no checksum saw (a step without a
  manifest)."""
  finite = jax.device_get(jax.jit(lambda t: jax.tree.map(lambda x: jnp.isfinite(x).all(), t))(params))
  for name, ok in _flat(finite).items():
    if not ok:
      raise DamagedCheckpointError(step, os.path.join(directory, str(step), "params"),
                                   f"parameter {name} holds NaN or inf")


def diagnose(step_dir: str, step: int, error: BaseException) -> DamagedCheckpointError:
  """The file and cause of `error` (raised while restoring `step_dir`), as one line.

  Orbax's own messages rarely name the file (a JSON item's decode error does not, a missing tree metadata
  file surfaces as a pytree-structure mismatch), so the step's files are checked first; failing that, the
  path under `step_dir` that the error chain names, else the step directory itself.
  """
  for item in ITEMS:
    item_dir = os.path.join(step_dir, item)
    # A JSON item's content, or an array tree's metadata (JSON too): the files Orbax's errors do not name.
    path = os.path.join(item_dir, "metadata" if item in ("data", "config") else "_METADATA")
    if not os.path.isfile(path):
      return DamagedCheckpointError(step, item_dir if not os.path.isdir(item_dir) else path, "missing")
    try:
      with open(path) as f:
        json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      return DamagedCheckpointError(step, path, f"not valid JSON ({e})")
  chain, e = [], error
  while e is not None and len(chain) < 10:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in reversed(chain):  # innermost first: the closest to the file
    text = str(e)
    found = re.search(re.escape(step_dir) + r"[^\s\"',]*", text)
    if found:
      line = next(l for l in text.splitlines() if found.group(0) in l)
      return DamagedCheckpointError(step, found.group(0).rstrip("/"), _short(line))
  return DamagedCheckpointError(step, step_dir, _short(f"{type(chain[-1]).__name__}: {chain[-1]}"))


def _short(text: str, limit: int = 240) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def first_restorable(directory: str, steps: list[int], requested: int | None, restore_fn, *, what: str):
  """restore_fn(step) for `requested` (DamagedCheckpointError if it fails) or, when it is None or 0, for
  the newest of `steps` (the step directories under `directory`) that restores, warning about every
  damaged newer one. Raises ValueError when `requested` is not among `steps` or when no step restores.
  Returns (step, restore_fn's result)."""
  if not steps:
    raise ValueError(f"no complete checkpoint in {directory}")
  if requested:
    if requested not in steps:
      raise ValueError(f"{what}={requested} is not a checkpoint of {directory}; it has steps {steps}")
    candidates = [requested]
  else:
    candidates = sorted(steps, reverse=True)
  damaged = []
  for step in candidates:
    try:
      return step, restore_fn(step)
    except Refused:
      raise
    except Exception as e:  # noqa: BLE001  any other failure of a restore is a damaged checkpoint, explained
      err = e if isinstance(e, DamagedCheckpointError) else diagnose(os.path.join(directory, str(step)), step, e)
      if requested:
        raise err from None
      _log.warning("%s; falling back to the previous checkpoint", err)
      damaged.append(str(err))
  raise ValueError(f"no checkpoint restores: {'; '.join(damaged)}")


def set_aside(workdir: str, directory: str, steps: list[int]) -> list[str]:
  """Move checkpoint steps out of the manager's directory into `workdir`/set_aside_checkpoints/ (kept,
  not deleted), so a run resumed from an earlier step writes its own checkpoints at those steps."""
  stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
  moved = []
  for step in steps:
    target = os.path.join(workdir, "set_aside_checkpoints", f"{step}-{stamp}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(os.path.join(directory, str(step)), target)
    moved.append(target)
  return moved


def _flat(tree) -> dict:
  """{"a/b/0": leaf} of a pytree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf for path, leaf in leaves}


def flat_shapes(tree) -> dict[str, tuple]:
  """{"a/b/0": shape} of a pytree of arrays (or array metadata)."""
  return {name: tuple(leaf.shape) for name, leaf in _flat(tree).items()}


def saved_shapes(item_dir: str) -> dict[str, tuple]:
  """{"a/b/0": shape} of an array item (e.g. STEP/params) from its metadata, without reading the arrays.

  The handler, not a StandardCheckpointer: the latter also looks for step metadata inside the item and
  warns that it is missing."""
  return flat_shapes(ocp.StandardCheckpointHandler().metadata(pathlib.Path(item_dir)))


def _from_hugging_face(folder: str, like_params) -> dict:
  """Params of a Hugging Face folder (models.hf_import) laid out like `like_params`."""
  from models import hf_import

  params = hf_import.load_params(folder)
  saved, wanted = flat_shapes(params), flat_shapes(like_params)
  if saved != wanted:
    name = min(set(saved) ^ set(wanted) or {n for n in saved if saved[n] != wanted[n]})
    raise ValueError(f"init_from={folder!r}: tensor {name!r} is {saved.get(name, 'absent')} in the Hugging Face "
                     f"checkpoint but {wanted.get(name, 'absent')} in this model")
  return jax.tree.map(lambda p, like: jax.device_put(p.astype(like.dtype), like.sharding), params, like_params)


def restore_params_from(other_workdir: str, like_params) -> tuple[dict, int]:
  """Params (laid out like `like_params`) from the newest checkpoint of another run that restores (a damaged
  newer one is skipped with a warning naming its file), and its step (0 for a Hugging Face folder:
  config.json + safetensors, e.g. a pretrained model to extend).

  Refuses (ValueError naming the tensor) when a tensor's shape differs or a tensor is missing on either
  side: fine-tuning and context extension keep the architecture.
  """
  if os.path.isfile(os.path.join(other_workdir, "config.json")):
    return _from_hugging_face(other_workdir, like_params), 0
  directory = os.path.abspath(os.path.join(other_workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise ValueError(f"init_from={other_workdir!r}: no checkpoints directory at {directory!r}")
  with ocp.CheckpointManager(directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(create=False)) as other:
    steps = sorted(other.all_steps())
  if not steps:
    raise ValueError(f"init_from={other_workdir!r}: no complete checkpoint in {directory!r}")
  checkpointer = ocp.StandardCheckpointer()

  def read(step: int):
    verify(directory, step, ("params",))
    path = os.path.join(directory, str(step), "params")
    _check_shapes(other_workdir, saved_shapes(path), flat_shapes(like_params))
    params = checkpointer.restore(path, abstract(like_params))
    check_finite(directory, step, params)
    return params

  step, params = first_restorable(directory, steps, None, read, what="init_from step")
  return params, step


def _check_shapes(other_workdir: str, saved: dict, wanted: dict):
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      raise Refused(f"init_from={other_workdir!r}: tensor {name!r} is missing from the checkpoint")
    if name not in wanted:
      raise Refused(f"init_from={other_workdir!r}: tensor {name!r} of the checkpoint has no place in this model")
    if saved[name] != wanted[name]:
      raise Refused(f"init_from={other_workdir!r}: tensor {name!r} has shape {saved[name]} in the checkpoint but "
                    f"{wanted[name]} in this model")
