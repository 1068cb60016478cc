"""The context-extension experiment, end to end: base model at L0, then 8x with each RoPE scaling rule,
with and without a short fine-tune; perplexity vs length and passkey accuracy vs length; plots and table.

python -m benchmarks.extension_experiment --root=runs/extension [--stages=base,zero_shot,finetune,report]

Stages (each skips work whose results already exist, so a rerun resumes):
  base       train.py --config=configs/extend.py:base                      -> ROOT/base
  zero_shot  python -m eval on the base checkpoint with each rule as an override -> ROOT/base/eval/STEP/RULE
  finetune   train.py --config=configs/extend.py:RULE --config.init_from=ROOT/base -> ROOT/RULE, then eval
  report     docs/extension_*.png and docs/extension_results.md from the JSON results
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from configs import extend
from eval import plots

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/extension", "Directory holding the base run and one run per rule.")
flags.DEFINE_list("stages", ["base", "zero_shot", "finetune", "report"], "Stages to run, in order.")
flags.DEFINE_list("rules", ["none", "linear", "ntk", "yarn"], "RoPE scaling rules (attention.rope.SCALING_KINDS).")
flags.DEFINE_list("lengths", [str(extend.L0 * f) for f in (1, 2, 4, 8)] + [str(extend.L0 // 2)],
                  "Evaluation lengths.")
flags.DEFINE_integer("ppl_documents", 8, "Held-out documents per length.")
flags.DEFINE_integer("passkey_samples", 4, "Passkey keys per (length, depth) cell.")
flags.DEFINE_string("docs", "docs", "Where the report stage writes its plots and Markdown.")
flags.DEFINE_bool("tiny", False, "Smoke run: the configs' `tiny` variants (set --lengths to e.g. 32,64,128,256).")

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {"none": "no scaling", "linear": "PI (linear)", "ntk": "NTK-aware", "yarn": "YaRN",
         "dynamic_ntk": "dynamic NTK"}


def _run(argv: list[str], log: str):
  print("+", " ".join(argv), f"> {log}", flush=True)
  t = time.time()
  with open(log, "a") as f:
    rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT_DIR)
  if rc:
    sys.exit(f"failed with exit status {rc} after {time.time() - t:.0f}s; see {log}")
  print(f"  done in {time.time() - t:.0f}s", flush=True)


def _latest_step(workdir: str) -> int | None:
  d = os.path.join(workdir, "checkpoints")
  steps = [int(s) for s in os.listdir(d) if s.isdigit()] if os.path.isdir(d) else []
  return max(steps) if steps else None


def _eval(workdir: str, tag: str, overrides: list[str]):
  step = _latest_step(workdir)
  out = os.path.join(workdir, "eval", str(step), tag)
  if os.path.isfile(os.path.join(out, "passkey.json")):
    return
  _run([sys.executable, "-m", "eval", f"--workdir={workdir}", f"--lengths={','.join(FLAGS.lengths)}",
        f"--tag={tag}", f"--ppl_documents={FLAGS.ppl_documents}", f"--passkey_samples={FLAGS.passkey_samples}",
        *overrides], os.path.join(FLAGS.root, f"eval_{os.path.basename(workdir)}_{tag or 'ft'}.log"))


def _train(config_arg: str, workdir: str, *overrides: str):
  config_arg += ",tiny" if FLAGS.tiny else ""
  if _latest_step(workdir) == extend.get_config(config_arg).num_steps:
    return
  _run([sys.executable, "train.py", f"--config=configs/extend.py:{config_arg}", f"--workdir={workdir}",
        *overrides], workdir + ".log")


def _scaling_overrides(rule: str) -> list[str]:
  c = extend.get_config(rule + (",tiny" if FLAGS.tiny else "")).model.rope_scaling
  return [f"--config.model.rope_scaling.kind={c.kind}", f"--config.model.rope_scaling.factor={c.factor}",
          f"--config.model.rope_scaling.original_max_len={c.original_max_len}"]


def _load(workdir: str, tag: str, task: str) -> dict:
  with open(os.path.join(workdir, "eval", str(_latest_step(workdir)), tag, f"{task}.json")) as f:
    return json.load(f)


def report(root: str, rules: list[str], docs: str):
  """Comparison plots and the Markdown table of every (rule, fine-tuned?) pair."""
  base = os.path.join(root, "base")
  runs = {}
  for rule in rules:
    runs[rule] = {t: _load(base, rule, t) for t in ("perplexity", "passkey")}
    runs[rule + "+ft"] = {t: _load(os.path.join(root, rule), "", t) for t in ("perplexity", "passkey")}
  os.makedirs(docs, exist_ok=True)
  l0 = runs[rules[0]]["perplexity"]["meta"]["train_length"]
  plots.compare_plot({k: v["perplexity"] for k, v in runs.items()}, "perplexity",
                     os.path.join(docs, "extension_perplexity.png"), ylabel="held-out perplexity", log_y=True,
                     train_length=l0, title=f"Perplexity vs length, base trained at {l0} (dashed: no fine-tune)")
  plots.compare_plot({k: dict(v["passkey"], acc=v["passkey"]["accuracy_per_length"]) for k, v in runs.items()},
                     "acc", os.path.join(docs, "extension_passkey.png"), ylabel="passkey accuracy",
                     train_length=l0, title="Passkey accuracy vs length (mean over depths)")
  plots.compare_plot({k: v["perplexity"]["position_loss"] for k, v in runs.items()}, "loss",
                     os.path.join(docs, "extension_position_loss.png"), ylabel="loss (nats/token)", x_key="start",
                     xlabel="position in the window (bucket start)", train_length=l0,
                     title=f"Loss by position at length {runs[rules[0]]['perplexity']['lengths'][-1]}")
  plots.passkey_heatmaps({k: v["passkey"] for k, v in runs.items()}, os.path.join(docs, "extension_heatmaps.png"))
  ppl_lengths = runs[rules[0]]["perplexity"]["lengths"]
  pk_lengths = runs[rules[0]]["passkey"]["lengths"]
  head = (["rule", "fine-tune"] + [f"ppl@{n}" for n in ppl_lengths] + [f"passkey@{n}" for n in pk_lengths])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key, r in runs.items():
    rule, ft = key.removesuffix("+ft"), key.endswith("+ft")
    steps = r["perplexity"]["meta"]["step"] if ft else 0
    cells = [NAMES.get(rule, rule), f"{steps} steps" if ft else "none"]
    cells += [f"{p:.2f}" for p in r["perplexity"]["perplexity"]]
    cells += [f"{a:.0%}" for a in r["passkey"]["accuracy_per_length"]]
    lines.append("| " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  with open(os.path.join(docs, "extension_table.md"), "w") as f:
    f.write(table + "\n")
  print(table)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.root, exist_ok=True)
  base = os.path.join(FLAGS.root, "base")
  t = time.time()
  for stage in FLAGS.stages:
    if stage == "base":
      _train("base", base)
    elif stage == "zero_shot":
      for rule in FLAGS.rules:
        _eval(base, rule, _scaling_overrides(rule))
    elif stage == "finetune":
      for rule in FLAGS.rules:
        _train(rule, os.path.join(FLAGS.root, rule), f"--config.init_from={base}")
        _eval(os.path.join(FLAGS.root, rule), "", [])
    elif stage == "report":
      report(FLAGS.root, FLAGS.rules, FLAGS.docs)
    else:
      raise app.UsageError(f"unknown stage {stage!r}; use base, zero_shot, finetune, report")
  print(f"stages {FLAGS.stages} took {time.time() - t:.0f}s")


if __name__ == "__main__":
  app.run(main)
