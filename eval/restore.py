"""Restore a train.py checkpoint for evaluation: its frozen config (with overrides) and its params.

A train.py checkpoint step holds the TrainConfig as JSON next to the params (training/checkpoint.py), so
the model is rebuilt from the checkpoint itself. Overrides (`model.rope_scaling.kind=yarn`,
`model.attention_pattern=LG`, `model.attention_impl=xla`, `model.max_len=4096`, ...) are applied to that
config before it is validated again, so a bad key or value fails with the trainer's own message. Params
are restored onto the first local device whatever the device count that wrote them.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

import models
from training.config import TrainConfig, from_config_dict


@dataclasses.dataclass
class Restored:
  """A model ready to evaluate: `model` holds the checkpoint's params under the (overridden) `config`."""

  model: nnx.Module
  config: TrainConfig
  step: int
  workdir: str


def parse_overrides(args: list[str]) -> dict[str, object]:
  """["model.max_len=4096", ...] (a leading "--config." is allowed) -> {"model.max_len": 4096}.

  Values are Python literals where they parse as one (ints, floats, bools, tuples, None), else strings.
  """
  out = {}
  for arg in args:
    text = arg[len("--config."):] if arg.startswith("--config.") else arg
    key, sep, value = text.partition("=")
    if not sep or not key:
      raise ValueError(f"config override {arg!r} must look like --config.KEY=VALUE")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def apply_overrides(config: dict, overrides: dict[str, object]) -> dict:
  """A copy of the nested dict `config` with dotted keys replaced; a key it does not have is an error."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    node, *parents = config, *key.split(".")[:-1]
    for i, part in enumerate(parents):
      if not isinstance(node.get(part), dict):
        raise ValueError(f"bad config override {key}={value!r}: the checkpoint's config has no section "
                         f"{'.'.join(parents[:i + 1])!r}")
      node = node[part]
    leaf = key.split(".")[-1]
    if leaf not in node:
      raise ValueError(f"bad config override {key}={value!r}: the checkpoint's config has no key {key!r} "
                       f"(known here: {sorted(node)})")
    node[leaf] = list(value) if isinstance(value, tuple) else value
  return config


def _manager(workdir: str) -> ocp.CheckpointManager:
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise ValueError(f"workdir={workdir!r} has no checkpoints directory ({directory!r}); train it with "
                     "train.py first")
  # An explicit params handler: without it item_metadata() has nothing to read the shapes with.
  handlers = {"params": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, item_handlers=handlers,
                               options=ocp.CheckpointManagerOptions(read_only=True))


def _shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
          for path, leaf in leaves}


def _pick_step(mngr: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
  steps = sorted(mngr.all_steps())
  if not steps:
    raise ValueError(f"workdir={workdir!r} has no complete checkpoint in {mngr.directory}")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"step={step} is not a checkpoint of workdir={workdir!r}; it has steps {steps}")
  return step


def saved_config(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, the TrainConfig dict stored with it) of checkpoint `step` (default: the latest) in `workdir`."""
  with _manager(workdir) as mngr:
    step = _pick_step(mngr, workdir, step)
    return step, mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def restore(workdir: str, step: int | None = None, overrides: dict[str, object] | None = None, *,
            min_max_len: int = 0) -> Restored:
  """The model of checkpoint `step` (default: the latest) in `workdir`, with config `overrides` applied.

  `min_max_len` raises model.max_len to at least that many tokens unless an override sets it: RoPE models
  have no position table, so max_len is only a bound, and evaluating past the training length is the point.

  Raises ValueError when the workdir has no (complete) checkpoint, the step does not exist, an override
  names an unknown key or a bad value, or the overrides change a parameter's shape.
  """
  with _manager(workdir) as mngr:
    step = _pick_step(mngr, workdir, step)
    saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    saved = apply_overrides(saved, overrides or {})
    if "model.max_len" not in (overrides or {}):
      saved["model"]["max_len"] = max(saved["model"]["max_len"], min_max_len)
    config = from_config_dict(saved)
    build = lambda: models.build_model(config.model, rngs=nnx.Rngs(0))
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    target = nnx.to_pure_dict(abstract)
    on_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device), target)
    have, want = _shapes(mngr.item_metadata(step)["params"]), _shapes(target)
    for name in sorted(set(have) | set(want)):
      if have.get(name) != want.get(name):
        shape = lambda s: "absent" if s is None else f"of shape {s}"
        raise ValueError(f"the overrides {sorted(overrides or {})} change the model: parameter {name} is "
                         f"{shape(have.get(name))} in checkpoint {step} of {workdir!r} but "
                         f"{shape(want.get(name))} in the evaluated model (only shape-preserving overrides "
                         "are allowed)")
    params = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))).params
  nnx.replace_by_pure_dict(abstract, params)
  return Restored(model=nnx.merge(graphdef, abstract, rest), config=config, step=step, workdir=workdir)
