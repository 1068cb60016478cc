"""Evaluate a train.py checkpoint: python -m eval --workdir=DIR [--step=N] [--tasks=perplexity,passkey,mqar,mlm]
[--lengths=256,512,...] [--tag=NAME] [--config.KEY=VALUE ...].

The model is rebuilt from the config stored in the checkpoint; --config.KEY=VALUE overrides it for the
evaluation only (e.g. --config.model.rope_scaling.kind=yarn --config.model.rope_scaling.factor=8
--config.model.rope_scaling.original_max_len=384, --config.model.attention_pattern=LG,
--config.model.attention_impl=reference). Results go to DIR/eval/STEP[/TAG]/{task}.json with PNG plots
(perplexity.png, passkey.png); --tag keeps the results of differently overridden evaluations apart.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from eval import passkey
from eval.evaluate import TASKS, evaluate, summary
from training import restore

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py run directory (holding checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.DEFINE_list("tasks", None, f"Comma-separated subset of {TASKS} (default: perplexity,passkey for a "
                  "decoder, mlm for an encoder).")
flags.DEFINE_list("lengths", None, "Evaluation lengths in tokens (default: the training length times "
                  "1/2, 1, 2, 4 and 8).")
flags.DEFINE_string("tag", "", "Subdirectory of DIR/eval/STEP for these results (e.g. the override's name).")
flags.DEFINE_integer("ppl_documents", 16, "Held-out documents scored at every length by the perplexity task.")
flags.DEFINE_integer("passkey_samples", 5, "Passkey prompts (keys) per (length, depth) cell.")
flags.DEFINE_list("passkey_depths", [str(d) for d in passkey.DEPTHS], "Needle depths in [0, 1].")
flags.DEFINE_integer("mqar_samples", 16, "MQAR rows per length (each holds one query per pair).")
flags.mark_flag_as_required("workdir")


def _numbers(name: str, values: list[str], kind: type, low: float, high: float = float("inf")) -> list:
  """--NAME's comma-separated values as `kind`, each in [low, high]; else a ValueError naming the flag."""
  try:
    out = [kind(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)}: must be comma-separated {kind.__name__}s") from None
  if not out or not all(low <= v <= high for v in out):
    raise ValueError(f"--{name}={','.join(values)}: every value must be in [{low}, {high}]")
  return out


def main(argv):
  overrides = restore.parse_overrides(argv[1:])
  results = evaluate(FLAGS.workdir, step=FLAGS.step, tasks=FLAGS.tasks,
                     lengths=None if FLAGS.lengths is None else _numbers("lengths", FLAGS.lengths, int, 2),
                     overrides=overrides, tag=FLAGS.tag, ppl_documents=FLAGS.ppl_documents,
                     passkey_samples=FLAGS.passkey_samples,
                     passkey_depths=_numbers("passkey_depths", FLAGS.passkey_depths, float, 0, 1), mqar_samples=FLAGS.mqar_samples)
  print(summary(results))


def _parse_flags(argv):
  """absl parses our flags; --config.KEY=VALUE arguments are passed on to main as overrides."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  rest = FLAGS([argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")])
  return rest + overrides


def run():
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO
  try:
    app.run(main, flags_parser=_parse_flags)
  except ValueError as e:  # bad input: flags, overrides, a missing or damaged checkpoint (training/restore.py)
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
