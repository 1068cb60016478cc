"""Train a model: python train.py --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=VALUE ...].

The config file's get_config(ARG) returns an ml_collections.ConfigDict (locked: a mistyped override is an
error); all logic lives in training.train_and_evaluate(config, workdir), which locks DIR and resumes from
its newest checkpoint that restores. SIGTERM saves a checkpoint and exits with status 0. Bad input (flags,
config, corpus, a workdir in use, a damaged checkpoint asked for) prints one line and exits with status 2.
"""

import difflib
import importlib.util
import logging as pylogging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import training
from training import sharding
from training.workdir import WorkdirLockedError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/demo.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tensorboard/.")
flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of process 0 (else auto-detected).")
flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  sharding.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    result = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, WorkdirLockedError) as e:  # bad input (config, corpus, workdir, checkpoint): one line
    _fail(str(e))
  state = "stopped by SIGTERM at" if result["stopped_early"] else "finished at"
  print(f"{state} step {result['step']}: final validation loss {result['val_loss']:.4f}")
  print(f"checkpoint: {result['checkpoint']}")


def _fail(message: str):
  """The error in one line on stderr, exit status 2 (as python -m eval does)."""
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def _config_spec(argv) -> str:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")


def _config_keys(spec: str) -> list[str]:
  """Every dotted key of the config file's get_config() (loaded again, as absl did, to suggest names)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_train_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  flat = (module.get_config(arg) if arg else module.get_config()).to_dict()
  keys, todo = [], [("", flat)]
  while todo:
    prefix, d = todo.pop()
    for k, v in d.items():
      (todo.append((f"{prefix}{k}.", v)) if isinstance(v, dict) else keys.append(prefix + k))
  return sorted(keys)


def suggest(key: str, known: list[str]) -> str:
  """'; did you mean X?' for the closest known name (by spelling, or by initials: lr -> learning_rate)."""
  section, _, leaf = key.rpartition(".")
  sections = sorted({k.rpartition(".")[0] for k in known})
  if section not in sections:  # a misspelt section: correct it first, then the leaf within it
    close = difflib.get_close_matches(section, sections, n=1, cutoff=0.6)
    if not close:
      return ""
    section, key = close[0], f"{close[0]}.{leaf}"
    return suggest(key, known) if key not in known else f"; did you mean {key!r}?"
  initials = [k for k in known if k.rpartition(".")[0] == section and
              "".join(w[:1] for w in k.rpartition(".")[2].split("_")) == leaf]
  close = initials or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  return f"; did you mean {close[0]!r}?" if close else ""


def _override_error(argv, error: BaseException) -> str:
  """One line for an override of a key the config does not have: the override, the key, a suggestion."""
  bad = re.match(r"""\W*(\w+)""", str(error.args[0] if error.args else error))
  part = bad.group(1) if bad else ""
  for arg in argv:
    if arg.startswith("--config.") and part in arg.split("=")[0][len("--config."):].split("."):
      key, _, value = arg[len("--config."):].partition("=")
      try:
        hint = suggest(key, _config_keys(_config_spec(argv)))
      except Exception:  # noqa: BLE001  the suggestion is a courtesy; the error stands without it
        hint = ""
      return f"--config.{key}={value}: unknown config key {key!r}{hint}"
  return f"unknown config key {part!r} in the overrides"


def _parse_flags(argv):
  """absl flag parsing, with one-line errors (exit status 2) for every mistake in the flags or config."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.to_dict()  # absl loads the config file (and applies overrides) lazily: fail here instead
    return rest
  except (AttributeError, KeyError) as e:
    _fail(_override_error(argv, e))
  except flags.IllegalFlagValueError as e:
    text = str(e).strip().splitlines()
    _fail(text[0] if not text[0].endswith("Error whilst parsing config file:") else
          f"{text[0].split(':')[0]}: the config file's get_config failed: {text[-1]}")
  except flags.Error as e:
    _fail(str(e))
  except OSError as e:
    spec = _config_spec(argv)
    path = spec.partition(":")[0]
    folder = os.path.dirname(path) or "."
    known = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
    close = difflib.get_close_matches(os.path.basename(path), known, n=1)
    hint = f"; did you mean {os.path.join(folder, close[0])!r}?" if close else ""
    cause = "no such file" if not os.path.isfile(path) else f"cannot load it ({e.__cause__ or e})"
    _fail(f"--config={spec}: {cause}{hint}")


if __name__ == "__main__":
  # Our progress lines at INFO; libraries (Orbax logs every file it writes) at WARNING.
  logging.set_verbosity(logging.WARNING)
  for name in ("training", "data", "models", "attention"):
    pylogging.getLogger(name).setLevel(pylogging.INFO)
  app.run(main, flags_parser=_parse_flags)
