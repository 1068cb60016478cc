"""Train a model: python train.py --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=VALUE ...].

The config file's get_config(ARG) returns an ml_collections.ConfigDict (locked: a mistyped override is an
error); all logic lives in training.train_and_evaluate(config, workdir), which resumes from the latest
complete checkpoint in DIR. SIGTERM saves a checkpoint and exits with status 0.
"""

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

import training
from training import sharding

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
  result = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  state = "stopped by SIGTERM at" if result["stopped_early"] else "finished at"
  print(f"{state} step {result['step']}: final validation loss {result['val_loss']:.4f}")
  print(f"checkpoint: {result['checkpoint']}")


def _parse_flags(argv):
  """absl flag parsing, with a one-line error for an override of a key the config does not have."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    key = str(e).strip("\"'")
    raise SystemExit(f"error: unknown config key {key!r} in the overrides {overrides}; every key must exist in "
                     "the config file's get_config()") from None


if __name__ == "__main__":
  # Our progress lines at INFO; libraries (Orbax logs every file it writes) at WARNING.
  logging.set_verbosity(logging.WARNING)
  for name in ("training", "data", "models", "attention"):
    pylogging.getLogger(name).setLevel(pylogging.INFO)
  app.run(main, flags_parser=_parse_flags)
