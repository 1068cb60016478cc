"""Evaluate a train.py checkpoint: python -m eval --workdir=DIR [--step=N] [--tasks=perplexity,passkey,mlm]
[--lengths=256,512,...] [--tag=NAME] [--config.KEY=VALUE ...].

The model is rebuilt from the config stored in the checkpoint; --config.KEY=VALUE overrides it for the
evaluation only (e.g. --config.model.rope_scaling.kind=yarn --config.model.rope_scaling.factor=8
--config.model.rope_scaling.original_max_len=384, --config.model.attention_pattern=LG,
--config.model.attention_impl=reference). Results go to DIR/eval/STEP[/TAG]/{task}.json with PNG plots
(perplexity.png, passkey.png); --tag keeps the results of differently overridden evaluations apart.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

import data as data_lib
from eval import mlm, passkey, perplexity, plots, restore

TASKS = ("perplexity", "passkey", "mlm")

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
flags.mark_flag_as_required("workdir")


def _ints(name: str, values: list[str]) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be comma-separated integers, got {','.join(values)!r}") from None
  if not out or min(out) < 2:
    raise ValueError(f"--{name} must be integers >= 2, got {out}")
  return out


def evaluate(workdir: str, *, step: int | None = None, tasks: list[str] | None = None,
             lengths: list[int] | None = None, overrides: dict | None = None, tag: str = "",
             ppl_documents: int = 16, passkey_samples: int = 5, passkey_depths=passkey.DEPTHS) -> dict:
  """Run `tasks` on a checkpoint and write DIR/eval/STEP[/TAG]/*.json and *.png; returns {task: result}."""
  unknown = sorted(set(tasks or ()) - set(TASKS))
  if unknown:
    raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
  if lengths is None:
    l0 = restore.saved_config(workdir, step)[1]["data"]["seq_len"]
    lengths = sorted({n for n in (l0 // 2, l0, 2 * l0, 4 * l0, 8 * l0) if n >= 2})
  r = restore.restore(workdir, step, overrides, min_max_len=max(lengths))
  cfg = r.config
  tasks = tasks or (["perplexity", "passkey"] if cfg.model.arch == "decoder" else ["mlm"])
  tokenizer = data_lib.get_tokenizer(cfg.data.tokenizer_path or None)
  out_dir = os.path.join(workdir, "eval", str(r.step), *([tag] if tag else []))
  os.makedirs(out_dir, exist_ok=True)
  meta = {"workdir": os.path.abspath(workdir), "step": r.step, "overrides": overrides or {},
          "train_length": cfg.data.seq_len, "model": cfg.model.to_dict()}
  train_length = cfg.data.seq_len
  title = f"{os.path.basename(os.path.abspath(workdir))} step {r.step}" + (f" [{tag}]" if tag else "")
  results = {}
  for task in tasks:
    t = time.perf_counter()
    if task == "perplexity":
      res = perplexity.perplexity_vs_length(r.model, cfg, tokenizer, lengths, max_docs=ppl_documents)
      res["validation_loss"] = perplexity.validation_loss(r.model, cfg, tokenizer)
      plots.perplexity_plot(res, os.path.join(out_dir, "perplexity.png"), train_length=train_length, title=title)
    elif task == "passkey":
      res = passkey.passkey_grid(r.model, tokenizer, lengths, depths=tuple(passkey_depths), samples=passkey_samples)
      plots.passkey_heatmap(res, os.path.join(out_dir, "passkey.png"), title=title)
    else:
      res = mlm.mlm_accuracy(r.model, cfg, tokenizer, lengths)
    res["seconds"] = time.perf_counter() - t
    results[task] = dict(res, meta=meta)
    with open(os.path.join(out_dir, f"{task}.json"), "w") as f:
      json.dump(results[task], f, indent=1)
    print(f"{task} done in {res['seconds']:.0f}s -> {out_dir}", file=sys.stderr, flush=True)
  return results


def _summary(results: dict) -> str:
  lines = []
  if "perplexity" in results:
    p = results["perplexity"]
    lines.append(f"validation loss (train.py's rows): {p['validation_loss']:.4f}")
    lines += [f"perplexity @ {n:>6}: {ppl:9.3f}   bits/byte {bpb:.3f}"
              for n, ppl, bpb in zip(p["lengths"], p["perplexity"], p["bits_per_byte"])]
  if "passkey" in results:
    p = results["passkey"]
    lines += [f"passkey @ {n:>6}: {acc:.0%}" for n, acc in zip(p["lengths"], p["accuracy_per_length"])]
  if "mlm" in results:
    p = results["mlm"]
    lines += [f"mlm accuracy @ {n:>6}: {acc:.3f}" for n, acc in zip(p["lengths"], p["accuracy"])]
  return "\n".join(lines)


def main(argv):
  overrides = restore.parse_overrides(argv[1:])
  results = evaluate(FLAGS.workdir, step=FLAGS.step, tasks=FLAGS.tasks,
                     lengths=None if FLAGS.lengths is None else _ints("lengths", FLAGS.lengths),
                     overrides=overrides, tag=FLAGS.tag, ppl_documents=FLAGS.ppl_documents,
                     passkey_samples=FLAGS.passkey_samples,
                     passkey_depths=[float(d) for d in FLAGS.passkey_depths])
  print(_summary(results))


def _parse_flags(argv):
  """absl parses our flags; --config.KEY=VALUE arguments are passed on to main as overrides."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  rest = FLAGS([argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")])
  return rest + overrides


def run():
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO
  try:
    app.run(main, flags_parser=_parse_flags)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
