"""Run a config's sweep: every override dict from its get_sweep() becomes one train.py run in its own workdir.

python -m configs.sweep --config=configs/decoder_125m.py[:ARG] --workdir=runs/sweep [--dry_run]

--dry_run prints the command lines; otherwise they run one after another (a failed run stops the sweep
with its exit status). A config without get_sweep() (or a missing file) is one line on stderr, exit
status 2. Each workdir is named after its overrides, so rerunning a sweep resumes its runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys

from absl import flags

from training import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file with get_sweep(), optionally with :ARG.")
flags.DEFINE_string("workdir", None, "Root directory; each run gets a subdirectory.")
flags.DEFINE_bool("dry_run", False, "Print the train.py command lines instead of running them.")
flags.mark_flags_as_required(["config", "workdir"])

_TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


def load_sweep(config: str) -> list[dict]:
  """The override dicts of `config`'s get_sweep() (path[:ARG]; ARG is passed on to train.py, not here)."""
  path = config.split(":", 1)[0]
  if not os.path.isfile(path):
    raise ValueError(f"config file does not exist: {path!r}")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--config={config}: {path} defines no get_sweep(), so it has no sweep to run; add one "
                     "returning a list of override dicts (see configs/decoder_tiny.py) or train it with train.py")
  sweep = module.get_sweep()
  if not sweep or not all(isinstance(o, dict) for o in sweep):
    raise ValueError(f"{path}: get_sweep() must return a non-empty list of override dicts, got {sweep!r}")
  return sweep


def run_name(overrides: dict) -> str:
  """A directory name from the overrides, e.g. optim.learning_rate=0.0003,optim.schedule=wsd."""
  name = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name) or "base"


def commands(config: str, workdir: str) -> list[list[str]]:
  """One train.py argv per sweep entry."""
  out = []
  for overrides in load_sweep(config):
    argv = [sys.executable, _TRAIN, f"--config={config}",
            f"--workdir={os.path.join(workdir, run_name(overrides))}"]
    argv += [f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in overrides.items()]
    out.append(argv)
  return out


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  cmds = commands(FLAGS.config, FLAGS.workdir)
  for i, cmd in enumerate(cmds):
    print(shlex.join(cmd), flush=True)
    if FLAGS.dry_run:
      continue
    rc = subprocess.call(cmd)
    if rc:
      print(f"run {i + 1}/{len(cmds)} failed with exit status {rc}; stopping the sweep", file=sys.stderr)
      sys.exit(rc)


if __name__ == "__main__":
  cli.run(main)
