"""Read a train.py run: a checkpoint's frozen config (with overrides) and its params, as a model.

The one reader of finished runs, used by eval, export.py, generate.py and the benchmarks. A train.py
checkpoint step holds the TrainConfig as JSON next to the params (training/checkpoint.py), so the model is
rebuilt from the checkpoint itself. The files read are checked against the step's checksum manifest first,
and restored params holding NaN or inf count as damage, so a damaged step is named and skipped.

Overrides (`model.rope_scaling.kind=yarn`, `model.attention_pattern=LG`, `model.attention_impl=xla`,
`model.max_len=4096`, ...) are applied to that config before it is validated again, so a bad key or value
fails with the trainer's own message. Params are restored onto the first local device whatever the device
count that wrote them.
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
from models.config import ModelConfig
from training import checkpoint
from training.config import TrainConfig, from_config_dict


@dataclasses.dataclass
class Restored:
  """A model ready to use: `model` holds the checkpoint's params under the (overridden) `config`."""

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
  # A handler for every item, so Orbax does not warn about the items a read leaves alone (it reads only
  # those it is given arguments for). Not read_only: that option only warns, three times, about saves and
  # deletions this reader never asks for.
  handlers = {"params": ocp.StandardCheckpointHandler(), "train_state": ocp.StandardCheckpointHandler(),
              "config": ocp.JsonCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, item_handlers=handlers,
                               options=ocp.CheckpointManagerOptions(create=False))


def _abstract_model(config: TrainConfig):
  """(graphdef, abstract params state, rest, pure-dict restore target on the first local device)."""
  build = lambda: models.build_model(config.model, rngs=nnx.Rngs(0))
  graphdef, abstract, rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
  on_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device),
                        nnx.to_pure_dict(abstract))
  return graphdef, abstract, rest, target


def _diff(have: dict, want: dict) -> str | None:
  """The first parameter whose shape differs, described, or None."""
  shape = lambda s: "absent" if s is None else f"of shape {s}"
  for name in sorted(set(have) | set(want)):
    if have.get(name) != want.get(name):
      return f"parameter {name} is {shape(have.get(name))} in the checkpoint but {shape(want.get(name))}"
  return None


def _read_step(mngr: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
  """(saved config dict, params restored under that config) of `step`: anything failing here is damage
  to the checkpoint itself, so nothing here involves the user's overrides."""
  directory = str(mngr.directory)
  checkpoint.verify(directory, step, ("config", "params"))
  saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  _, _, _, target = _abstract_model(from_config_dict(copy.deepcopy(saved)))
  saved_params = checkpoint.saved_shapes(os.path.join(directory, str(step), "params"))
  mismatch = _diff(saved_params, checkpoint.flat_shapes(target))
  if mismatch:
    raise ValueError(f"params/_METADATA disagrees with the checkpoint's own config: {mismatch}")
  params = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))).params
  checkpoint.check_finite(directory, step, params)
  return saved, params


def _pick(mngr: ocp.CheckpointManager, step: int | None, read):
  """(step, read(step)) for `step`, or for the newest step that reads when it is None."""
  return checkpoint.first_restorable(str(mngr.directory), sorted(mngr.all_steps()), step, read, what="step")


def saved_config(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, the TrainConfig dict stored with it) of checkpoint `step` (default: the newest whose config
  reads)."""
  def read(s: int) -> dict:
    checkpoint.verify(str(mngr.directory), s, ("config",), log=False)  # restore() says it once
    return mngr.restore(s, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  with _manager(workdir) as mngr:
    return _pick(mngr, step, read)


def restore(workdir: str, step: int | None = None, overrides: dict[str, object] | None = None, *,
            min_max_len: int = 0) -> Restored:
  """The model of checkpoint `step` (default: the newest that restores) in `workdir`, with config
  `overrides` applied.

  `min_max_len` raises model.max_len to at least that many tokens unless an override sets it: RoPE models
  have no position table, so max_len is only a bound, and evaluating past the training length is the point.

  A damaged newest checkpoint is skipped with a warning naming its step, file and cause; a damaged
  `step` raises checkpoint.DamagedCheckpointError (a ValueError) naming them. Raises ValueError when the
  workdir has no (complete) checkpoint, the step does not exist, an override names an unknown key or a
  bad value, or the overrides change a parameter's shape.
  """
  with _manager(workdir) as mngr:
    step, (saved, params) = _pick(mngr, step, lambda s: _read_step(mngr, s))
  # ModelConfig fields added after the checkpoint was written take their defaults, which keep the behaviour
  # it was trained with, and can then be overridden like the others (e.g. model.logn_attention).
  saved["model"] = {**ModelConfig().to_dict(), **saved["model"]}
  saved = apply_overrides(saved, overrides or {})
  if "model.max_len" not in (overrides or {}):
    saved["model"]["max_len"] = max(saved["model"]["max_len"], min_max_len)
  config = from_config_dict(saved)
  graphdef, abstract, rest, target = _abstract_model(config)
  mismatch = _diff(checkpoint.flat_shapes(params), checkpoint.flat_shapes(target))
  if mismatch:
    raise ValueError(f"the overrides {sorted(overrides or {})} change the model: {mismatch} of step {step} "
                     f"of {workdir!r} vs the evaluated model (only shape-preserving overrides are allowed)")
  params = jax.tree.map(lambda p, t: p.astype(t.dtype), params, target)  # e.g. a param_dtype override
  nnx.replace_by_pure_dict(abstract, params)
  return Restored(model=nnx.merge(graphdef, abstract, rest), config=config, step=step, workdir=workdir)
