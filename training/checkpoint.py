"""Orbax checkpoints: async saves, automatic resume, restore onto any mesh, params-only init from a run.

A checkpoint step holds four items: "params" (float32 master weights), "train_state" (optimizer state,
step, RNG key data, NaN-guard counters), "data" (the grain iterator state, JSON) and "config" (the frozen
TrainConfig, JSON). Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves only finished steps visible; leftover temporaries are removed on start.
Restoring goes through an abstract state (ShapeDtypeStruct + sharding for the *current* mesh), so a
checkpoint written on 8 devices loads on 1 and vice versa.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from training.config import TrainConfig

ITEMS = ("params", "train_state", "data", "config")


def manager(workdir: str, config: TrainConfig) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir`/checkpoints (saves only where the caller asks; see should_save)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint.max_to_keep, enable_async_checkpointing=config.checkpoint.async_save,
      cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
                               item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, state: dict, data_state: dict, config: TrainConfig):
  """Start an (async) save of `state` at its step; returns once device buffers are copied."""
  step = int(jax.device_get(state["step"]))
  rest = {k: v for k, v in state.items() if k != "params"}
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state["params"]), train_state=ocp.args.StandardSave(rest),
      data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config.to_dict())), force=True)


def abstract(tree):
  """ShapeDtypeStructs carrying each array's current sharding: the restore target for this mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(mngr: ocp.CheckpointManager, step: int, like_state: dict) -> tuple[dict, dict]:
  """(state laid out like `like_state`, data iterator state) from checkpoint `step`."""
  target = abstract(like_state)
  rest = {k: v for k, v in target.items() if k != "params"}
  out = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target["params"]), train_state=ocp.args.StandardRestore(rest),
      data=ocp.args.JsonRestore()))
  return dict(out.train_state, params=out.params), out.data


def _flat_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
          for path, leaf in leaves}


def _from_hugging_face(folder: str, like_params) -> dict:
  """Params of a Hugging Face folder (models.hf_import) laid out like `like_params`."""
  from models import hf_import

  params = hf_import.load_params(folder)
  saved, wanted = _flat_shapes(params), _flat_shapes(like_params)
  if saved != wanted:
    name = min(set(saved) ^ set(wanted) or {n for n in saved if saved[n] != wanted[n]})
    raise ValueError(f"init_from={folder!r}: tensor {name!r} is {saved.get(name, 'absent')} in the Hugging Face "
                     f"checkpoint but {wanted.get(name, 'absent')} in this model")
  return jax.tree.map(lambda p, like: jax.device_put(p.astype(like.dtype), like.sharding), params, like_params)


def restore_params_from(other_workdir: str, like_params) -> tuple[dict, int]:
  """Params (laid out like `like_params`) from the latest checkpoint of another run, and its step (0 for a
  Hugging Face folder: config.json + safetensors, e.g. a pretrained model to extend).

  Refuses (ValueError naming the tensor) when a tensor's shape differs or a tensor is missing on either
  side: fine-tuning and context extension keep the architecture.
  """
  if os.path.isfile(os.path.join(other_workdir, "config.json")):
    return _from_hugging_face(other_workdir, like_params), 0
  directory = os.path.abspath(os.path.join(other_workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise ValueError(f"init_from={other_workdir!r}: no checkpoints directory at {directory!r}")
  with ocp.CheckpointManager(directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(create=False)) as other:
    step = other.latest_step()
  if step is None:
    raise ValueError(f"init_from={other_workdir!r}: no complete checkpoint in {directory!r}")
  path = os.path.join(directory, str(step), "params")
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  saved = _flat_shapes(getattr(meta, "item_metadata", meta))
  wanted = _flat_shapes(like_params)
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      raise ValueError(f"init_from={other_workdir!r}: tensor {name!r} is missing from the checkpoint")
    if name not in wanted:
      raise ValueError(f"init_from={other_workdir!r}: tensor {name!r} of the checkpoint has no place in "
                       f"this model")
    if saved[name] != wanted[name]:
      raise ValueError(f"init_from={other_workdir!r}: tensor {name!r} has shape {saved[name]} in the "
                       f"checkpoint but {wanted[name]} in this model")
  return checkpointer.restore(path, abstract(like_params)), step
