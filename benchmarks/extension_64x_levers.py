"""The recipe levers of the 64x experiment, each one short run from seed 0's checkpoints of
benchmarks/extension_64x.py (ROOT/seed0/VARIANT/8x_yarn), evaluated at 128, 1024, 4096 and 8192
(40 passkey prompts per length, 4 MQAR rows, the DSA indexer's recall); results to
docs/results/extension_64x/levers.json. configs/extend_64x.py's recipe was chosen from these.

python -m benchmarks.extension_64x_levers                      # run what is missing, then collect
python -m benchmarks.extension_64x_levers --levers=global/prog_long --stages=collect

A lever is a chain of stages; each stage is train.py --config=configs/extend_64x.py:64x,VARIANT,yarn with
overrides (the factor, length and batch of an intermediate stage; a data mix; a learning rate), restoring
the stage before it (the first restores the variant's seed-0 8x_yarn, or another lever's stage). Runs go
to ROOT/levers/VARIANT/NAME[/STAGE].

These levers were measured on the first recipe's 8x stage (one 200-step stage on exact positions, before
8x_rand; its runs were moved to runs/ext64_v1), which is why ROOT defaults there.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from benchmarks.common import latest_step, run_logged
from configs import extend_64x
from configs.extend_64x import L0
from training.config import from_config_dict

flags.DEFINE_string("root", "runs/ext64_v1",
                    "The first recipe's runs (ROOT/seed0/VARIANT/8x_yarn is restored; docstring).")
flags.DEFINE_list("levers", None, "VARIANT/NAME of the levers to run (default: all).")
flags.DEFINE_list("stages", ["zero_shot", "train", "eval", "collect"], "zero_shot, train, eval, collect.")
flags.DEFINE_string("out", "docs/results/extension_64x/levers.json", "Collected results.")
FLAGS = flags.FLAGS

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = (128, 1024, 4096, 8192)
ZERO_SHOT_FACTORS = (8, 12, 16, 32, 64)  # YaRN factors applied to global's 8x checkpoint without training


def _stage(factor: int, batch: int, steps: int, **extra) -> dict:
  """Overrides that turn the 64x config into the factor-x stage (YaRN factor relative to L0)."""
  length = factor * L0
  return {"model.rope_scaling.factor": float(factor), "model.max_len": length, "data.seq_len": length,
          "data.batch_size": batch, "num_steps": steps, "eval_every": steps, "checkpoint.every": steps, **extra}


# The direct 64x stage of the first recipe: 100 steps x 1 row of 8192 from the 8x stage, episodes from L0.
DIRECT = {"data.episode_min_len": L0}
PROGRESSIVE = [("16x", _stage(16, 4, 50, **DIRECT)), ("32x", _stage(32, 2, 50, **DIRECT)), ("64x", DIRECT)]
LEVERS = {  # VARIANT/NAME -> (what it restores, [(stage, overrides)], what it tests)
    "global/lr1e4": ("8x_yarn", [("64x", {**DIRECT, "optim.learning_rate": 1e-4})],
                     "direct 64x at a third of the learning rate: does it keep L0's passkey?"),
    "global/pk50": ("8x_yarn", [("64x", {**DIRECT, "data.passkey_rate": 0.5, "data.mqar_rate": 0.3})],
                    "direct 64x with 2.5x the passkey rows"),
    "global/pk50_long": ("8x_yarn", [("64x", {"data.passkey_rate": 0.5, "data.mqar_rate": 0.3,
                                              "data.episode_min_len": 1024})],
                         "direct 64x, 2.5x passkey rows, episodes from 1024 (4x the whole-row episodes)"),
    "global/prog": ("8x_yarn", PROGRESSIVE, "8x -> 16x -> 32x -> 64x, YaRN relative to L0 at every step"),
    "global/prog_long": ("global/prog/32x", [("64x", {"data.episode_min_len": 1024})],
                         "the progressive chain, its 64x stage on episodes from 1024 (the recipe)"),
    "global/prog_long200": ("global/prog/32x", [("64x", {"data.episode_min_len": 1024, "num_steps": 200,
                                                         "eval_every": 200, "checkpoint.every": 200})],
                            "the recipe with twice the 64x steps"),
    "local/prog": ("8x_yarn", PROGRESSIVE, "the progressive chain for local/global"),
}


def _workdir(name: str, stage: str, chain: list) -> str:
  base = os.path.join(FLAGS.root, "levers", name)
  return base if len(chain) == 1 else os.path.join(base, stage)


def _start(name: str) -> str:
  """The run a lever's first stage restores: its variant's seed-0 stage ("8x_yarn") or another lever's stage
  ("global/prog/32x")."""
  ref = LEVERS[name][0]
  if "/" not in ref:
    return os.path.join(FLAGS.root, "seed0", name.split("/")[0], ref)
  other, stage = ref.rsplit("/", 1)
  return _workdir(other, stage, LEVERS[other][1])


def check(name: str):
  """Build and validate the config of every stage of a lever (a bad override key or value fails here, before
  anything trains)."""
  variant = name.split("/")[0]
  for stage, overrides in LEVERS[name][1]:
    c = extend_64x.get_config(f"64x,{variant},yarn")
    for key, value in overrides.items():
      *path, leaf = key.split(".")
      node = c
      for part in path:
        node = node[part]
      if leaf not in node:
        raise app.UsageError(f"lever {name}, stage {stage}: no config key {key!r}")
      node[leaf] = value
    from_config_dict(c)


def _tasks(variant: str) -> str:
  return "passkey,mqar" + (",indexer_recall" if variant.startswith("dsa") else "")


def run(name: str, train: bool, evaluate: bool):
  variant, chain, init = name.split("/")[0], LEVERS[name][1], _start(name)
  for stage, overrides in chain:
    wd = _workdir(name, stage, chain)
    if train and latest_step(wd) is None:
      run_logged([sys.executable, "train.py", f"--config=configs/extend_64x.py:64x,{variant},yarn", f"--workdir={wd}",
                  "--config.seed=0", f"--config.init_from={init}"] +
                 [f"--config.{k}={v}" for k, v in overrides.items()], wd + ".log", {}, "train", cwd=ROOT_DIR)
    init = wd
  if evaluate and not os.path.isdir(os.path.join(init, "eval")):
    run_logged([sys.executable, "-m", "eval", f"--workdir={init}", f"--lengths={','.join(map(str, LENGTHS))}",
                f"--tasks={_tasks(variant)}", "--passkey_samples=8", "--mqar_samples=4"],
               init + ".eval.log", {}, "eval", cwd=ROOT_DIR)


def _zero_shot_dir(factor: int) -> str:
  """Where eval writes the tagged zero-shot results of global's 8x checkpoint with YaRN factor `factor`."""
  wd = os.path.join(FLAGS.root, "seed0", "global", "8x_yarn")
  return os.path.join(wd, "eval", str(latest_step(wd)), f"yarn{factor}")


def zero_shot():
  """Passkey of global's 8x checkpoint with the YaRN factor changed at evaluation: how far the factor can
  grow before the model needs training."""
  wd = os.path.join(FLAGS.root, "seed0", "global", "8x_yarn")
  for factor in ZERO_SHOT_FACTORS:
    if not os.path.isfile(os.path.join(_zero_shot_dir(factor), "passkey.json")):
      run_logged([sys.executable, "-m", "eval", f"--workdir={wd}", "--lengths=128,1024,2048", "--tasks=passkey",
                  "--passkey_samples=4", f"--tag=yarn{factor}", f"--config.model.rope_scaling.factor={factor}.0",
                  "--config.model.max_len=8192"], _zero_shot_dir(factor) + ".log", {}, "eval", cwd=ROOT_DIR)


def collect(names: list[str]) -> dict:
  out = {"setup": __doc__.split("\n\n")[0].replace("\n", " "), "levers": {}, "zero_shot_global_8x": {}}
  for factor in ZERO_SHOT_FACTORS:
    if os.path.isfile(os.path.join(_zero_shot_dir(factor), "passkey.json")):
      pk = json.load(open(os.path.join(_zero_shot_dir(factor), "passkey.json")))
      out["zero_shot_global_8x"][f"yarn{factor}"] = dict(zip(map(str, pk["lengths"]), pk["accuracy_per_length"]))
  for name in names:
    start, chain, what = LEVERS[name]
    wd = _workdir(name, chain[-1][0], chain)
    step = latest_step(wd)
    d = os.path.join(wd, "eval", str(step))
    if step is None or not os.path.isfile(os.path.join(d, "passkey.json")):
      continue
    read = lambda t: json.load(open(os.path.join(d, t + ".json")))
    pk, mq = read("passkey"), read("mqar")
    r = {"what": what, "restores": start, "stages": [[s, o] for s, o in chain],
         "passkey": dict(zip(map(str, pk["lengths"]), pk["accuracy_per_length"])),
         "passkey_by_depth": {str(n): dict(zip(map(str, pk["depths"]), a))
                              for n, a in zip(pk["lengths"], pk["accuracy"])},
         "mqar": dict(zip(map(str, mq["lengths"]), mq["accuracy"]))}
    if os.path.isfile(os.path.join(d, "indexer_recall.json")):
      ir = read("indexer_recall")
      r["indexer_recall_mqar_value"] = {str(n): v[0] for n, v in zip(ir["lengths"], ir["mqar_value"])}
    out["levers"][name] = r
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  names = FLAGS.levers or list(LEVERS)
  unknown = sorted(set(names) - set(LEVERS)) + sorted(set(FLAGS.stages) - {"zero_shot", "train", "eval", "collect"})
  if unknown:
    raise app.UsageError(f"unknown lever or stage {unknown}; levers: {list(LEVERS)}")
  for name in names:
    check(name)
  if "zero_shot" in FLAGS.stages:
    zero_shot()
  for name in names:
    run(name, "train" in FLAGS.stages, "eval" in FLAGS.stages)
  if "collect" in FLAGS.stages:
    out = collect(names)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump(out, f, indent=1)
    fmt = lambda d: " / ".join(f"{v:.0%}" for v in d.values())
    for name, r in out["levers"].items():
      print(f"{name}: passkey {fmt(r['passkey'])}, MQAR {fmt(r['mqar'])} at {' / '.join(r['passkey'])}")


if __name__ == "__main__":
  app.run(main)
