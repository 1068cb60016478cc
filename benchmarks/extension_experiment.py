"""The context-extension experiment on retrieval, end to end: the base model of configs/retrieval_base.py at
L0, then 8x with each RoPE scaling rule, zero-shot and after a short fine-tune; passkey exact match by
length and depth, MQAR exact match by length and gap, perplexity by length; docs/results/extension_results.json.

python -m benchmarks.extension_experiment --root=runs/extension [--stages=base,zero_shot,finetune,report]

Stages (each skips work whose results already exist, so a rerun resumes):
  base       train.py --config=configs/extend.py:base                         -> ROOT/base
  zero_shot  python -m eval on the base checkpoint with each rule as an override -> ROOT/base/eval/STEP/RULE
  finetune   train.py --config=configs/extend.py:RULE --config.init_from=ROOT/base -> ROOT/RULE, then eval
  report     docs/results/extension_results.json (the schema of the issue, plus per-depth / per-gap detail and the
             wall and CPU seconds of every stage), docs/results/extension_table.md, and the plots
Variants (--variant=local|dsa) train their own base and rules under ROOT/VARIANT and land under "variants".
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
from absl import app, flags

from configs import extend
from benchmarks.common import latest_step, run_logged
from eval import plots

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/extension", "Directory holding the base run and one run per rule.")
flags.DEFINE_list("stages", ["base", "zero_shot", "finetune", "report"], "Stages to run, in order.")
flags.DEFINE_list("rules", list(extend.ZERO_SHOT_RULES), "Rules measured zero-shot (configs/extend.py).")
flags.DEFINE_list("finetune_rules", list(extend.RULES), "Rules fine-tuned at 8x (dynamic_ntk has none).")
flags.DEFINE_list("lengths", [str(extend.L0 * f) for f in (1, 2, 4, 8)], "Evaluation lengths.")
flags.DEFINE_integer("ppl_documents", 8, "Held-out documents per length.")
flags.DEFINE_integer("passkey_samples", 4, "Passkey keys per (length, depth) cell.")
flags.DEFINE_integer("mqar_samples", 16, "MQAR rows per length.")
flags.DEFINE_string("variant", "", "'' (all-global base), 'local' or 'dsa' (configs/extend.py).")
flags.DEFINE_string("docs", "docs/results", "Where the report stage writes its JSON, plots and table.")
flags.DEFINE_bool("tiny", False, "Smoke run: the configs' `tiny` variants (set --lengths to e.g. 32,64,128,256).")

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {"none": "no scaling", "linear": "PI (linear)", "ntk": "NTK-aware", "dynamic_ntk": "dynamic NTK",
         "yarn": "YaRN", "yarn_notemp": "YaRN, no temperature"}
TASKS = ("perplexity", "passkey", "mqar")


def _suffix() -> str:
  return (f",{FLAGS.variant}" if FLAGS.variant else "") + (",tiny" if FLAGS.tiny else "")


def _eval(workdir: str, tag: str, overrides: list[str], timing: dict, name: str):
  out = os.path.join(workdir, "eval", str(latest_step(workdir)), tag)
  if os.path.isfile(os.path.join(out, "mqar.json")):
    return
  log = os.path.join(os.path.dirname(workdir), f"eval_{os.path.basename(workdir)}_{tag or 'ft'}.log")
  run_logged([sys.executable, "-m", "eval", f"--workdir={workdir}", f"--lengths={','.join(FLAGS.lengths)}",
              f"--tasks={','.join(TASKS)}", f"--tag={tag}", f"--ppl_documents={FLAGS.ppl_documents}",
              f"--passkey_samples={FLAGS.passkey_samples}", f"--mqar_samples={FLAGS.mqar_samples}", *overrides],
             log, timing, name, cwd=ROOT_DIR)


def _train(stage: str, workdir: str, timing: dict, *overrides: str):
  config_arg = stage + _suffix()
  if latest_step(workdir) == extend.get_config(config_arg).num_steps:
    return
  run_logged([sys.executable, "train.py", f"--config=configs/extend.py:{config_arg}", f"--workdir={workdir}",
              *overrides], workdir + ".log", timing, f"train_{stage}", cwd=ROOT_DIR)


def _scaling_overrides(rule: str) -> list[str]:
  l0 = extend.get_config("base" + _suffix()).data.seq_len
  return [f"--config.model.rope_scaling.{k}={v}" for k, v in extend.scaling(rule, l0).items()]


def _load(workdir: str, tag: str) -> dict:
  out = os.path.join(workdir, "eval", str(latest_step(workdir)), tag)
  res = {}
  for task in TASKS:
    with open(os.path.join(out, f"{task}.json")) as f:
      res[task] = json.load(f)
  return res


def _summary(r: dict) -> dict:
  """The issue's per-run keys: {"passkey": {len: acc}, "mqar": {len: acc}, "ppl": {len: perplexity}}."""
  return {"passkey": {str(n): a for n, a in zip(r["passkey"]["lengths"], r["passkey"]["accuracy_per_length"])},
          "mqar": {str(n): a for n, a in zip(r["mqar"]["lengths"], r["mqar"]["accuracy"])},
          "ppl": {str(n): p for n, p in zip(r["perplexity"]["lengths"], r["perplexity"]["perplexity"])}}


def _detail(r: dict) -> dict:
  return {"passkey_by_depth": {str(n): dict(zip(map(str, r["passkey"]["depths"]), row))
                               for n, row in zip(r["passkey"]["lengths"], r["passkey"]["accuracy"])},
          "mqar_by_gap": {str(n): {"edges": e, "accuracy": a}
                          for n, e, a in zip(r["mqar"]["lengths"], r["mqar"]["gap_edges"], r["mqar"]["by_gap"])},
          "validation_loss": r["perplexity"]["validation_loss"], "step": r["perplexity"]["meta"]["step"]}


def frequency_bands(rule: str, head_dim: int, theta: float, l0: int) -> dict:
  """How many rotary frequencies reach, at 8 L0, a phase beyond any the base saw in training.

  Base frequency w_i turns L0 w_i radians over L0; a dimension with L0 w_i < 2 pi never completed a turn, so
  phases above L0 w_i are new to the model. After scaling, w'_i * 8 L0 is the largest phase at 8x.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from attention.rope import RopeScaling, rope_frequencies  # pylint: disable=g-import-not-at-top
  base, _ = rope_frequencies(head_dim, theta)
  args = extend.scaling(rule, l0)
  seq = extend.FACTOR * l0
  scaled, scale = rope_frequencies(head_dim, theta, RopeScaling(**args), seq_len=seq)
  base, scaled = np.asarray(base), np.asarray(scaled)
  partial = base * l0 < 2 * math.pi
  beyond = partial & (scaled * seq > base * l0 * 1.0001)
  return {"dims": int(base.size), "partial_turn_in_L0": int(partial.sum()), "beyond_trained_phase": int(beyond.sum()),
          "attention_scale_squared": float(scale) ** 2, "inv_freq": jnp.asarray(scaled).tolist()}


def _collect(root: str, rules: list[str], finetune_rules: list[str]) -> tuple[dict, dict, dict]:
  """One base run and its rules under root -> (the issue's {"base", "rules"} entry, details, raw runs)."""
  base = os.path.join(root, "base")
  runs = {"base": _load(base, "none")}
  entry, details = {"base": _summary(runs["base"]), "rules": {}}, {"base": _detail(runs["base"])}
  for rule in rules:
    zs = _load(base, rule)
    entry["rules"][rule] = {"zero_shot": _summary(zs)}
    details[rule] = {"zero_shot": _detail(zs)}
    runs[rule] = zs
    ft_dir = os.path.join(root, rule)
    if rule in finetune_rules and latest_step(ft_dir) is not None:
      ft = _load(ft_dir, "")
      entry["rules"][rule]["finetune"] = _summary(ft)
      details[rule]["finetune"] = _detail(ft)
      runs[rule + "+ft"] = ft
  return entry, details, runs


def _timing(root: str) -> dict:
  path = os.path.join(root, "timing.json")
  return json.load(open(path)) if os.path.isfile(path) else {}


def report(root: str, docs: str, timing: dict):
  """docs/results/extension_results.json, the Markdown table and the plots; variants run under ROOT/VARIANT (their
  own invocations with --variant) land under "variants" with the rules they ran."""
  cfg = extend.get_config("base" + _suffix())
  l0 = cfg.data.seq_len
  entry, details, runs = _collect(root, FLAGS.rules, FLAGS.finetune_rules)
  out = {"L0": l0, "factor": extend.FACTOR, "base": entry["base"], "rules": entry["rules"], "variants": {},
         "details": details}
  for rule in FLAGS.rules:
    details[rule]["bands"] = frequency_bands(rule, cfg.model.head_dim, cfg.model.rope_theta, l0)
  for variant in extend.VARIANTS:
    vroot = os.path.join(root, variant)
    if FLAGS.variant or latest_step(os.path.join(vroot, "base")) is None:
      continue
    vbase_eval = os.path.join(vroot, "base", "eval", str(latest_step(os.path.join(vroot, "base"))))
    vrules = [r for r in FLAGS.rules if os.path.isfile(os.path.join(vbase_eval, r, "mqar.json"))]  # those it ran
    ventry, vdetails, _ = _collect(vroot, vrules, FLAGS.finetune_rules)
    vcfg = extend.get_config(f"base,{variant}" + (",tiny" if FLAGS.tiny else "")).model
    ventry["model"] = {"attention_pattern": vcfg.attention_pattern, "window": list(vcfg.window),
                       "dsa_top_k": vcfg.dsa_top_k}
    ventry["details"], ventry["timing"] = vdetails, _timing(vroot)
    out["variants"][variant] = ventry
  out["timing"] = timing
  out["machine"] = f"{os.cpu_count()}-core CPU (wall_s: elapsed; cpu_s: user+sys of the stage's processes)"
  os.makedirs(docs, exist_ok=True)
  suffix = f"_{FLAGS.variant}" if FLAGS.variant else ""  # a variant reported alone does not overwrite the main
  name = "extension_results" + suffix
  with open(os.path.join(docs, name + ".json"), "w") as f:
    json.dump(out, f, indent=1)
  labelled = {NAMES.get(k.removesuffix("+ft"), k) + ("+ft" if k.endswith("+ft") else ""): v
              for k, v in runs.items() if k != "base"}
  plots.compare_plot({k: v["perplexity"] for k, v in labelled.items()}, "perplexity",
                     os.path.join(docs, f"extension_perplexity{suffix}.png"), ylabel="held-out perplexity",
                     log_y=True, train_length=l0,
                     title=f"Perplexity vs length, base trained at {l0} (dashed: no fine-tune)")
  plots.compare_plot({k: dict(v["passkey"], acc=v["passkey"]["accuracy_per_length"]) for k, v in labelled.items()},
                     "acc", os.path.join(docs, f"extension_passkey{suffix}.png"), ylabel="passkey exact match",
                     train_length=l0, title="Passkey accuracy vs length (mean over depths)")
  plots.compare_plot({k: v["mqar"] for k, v in labelled.items()}, "accuracy",
                     os.path.join(docs, f"extension_mqar{suffix}.png"), ylabel="MQAR exact match", train_length=l0,
                     title="MQAR accuracy vs length")
  plots.passkey_heatmaps({k: v["passkey"] for k, v in labelled.items()},
                         os.path.join(docs, f"extension_heatmaps{suffix}.png"))
  lengths = FLAGS.lengths
  head = ["rule", "fine-tune"] + [f"passkey@{n}" for n in lengths] + [f"mqar@{n}" for n in lengths] + \
         [f"ppl@{n}" for n in lengths]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  rows = [(NAMES.get(rule, rule), kind, s, out["details"][rule])
          for rule, entry in out["rules"].items() for kind, s in entry.items()]
  rows += [(f"{NAMES.get(rule, rule)} ({v})", kind, s, e["details"][rule])
           for v, e in out["variants"].items() for rule, entry in e["rules"].items() for kind, s in entry.items()]
  for label, kind, s, det in rows:
    cells = [label, f"{det[kind]['step']} steps" if kind == "finetune" else "none"]
    cells += [f"{s['passkey'][n]:.0%}" if n in s['passkey'] else "-" for n in lengths]
    cells += [f"{s['mqar'].get(n, float('nan')):.0%}" for n in lengths]
    cells += [f"{s['ppl'].get(n, float('nan')):.2f}" for n in lengths]
    lines.append("| " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  with open(os.path.join(docs, name.replace("results", "table") + ".md"), "w") as f:
    f.write(table + "\n")
  print(table)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  root = os.path.join(FLAGS.root, FLAGS.variant) if FLAGS.variant else FLAGS.root
  os.makedirs(root, exist_ok=True)
  base = os.path.join(root, "base")
  timing_path = os.path.join(root, "timing.json")
  timing = json.load(open(timing_path)) if os.path.isfile(timing_path) else {}
  t = time.time()
  for stage in FLAGS.stages:
    if stage == "base":
      _train("base", base, timing)
    elif stage == "zero_shot":
      for rule in FLAGS.rules:
        _eval(base, rule, _scaling_overrides(rule), timing, f"eval_zero_shot_{rule}")
    elif stage == "finetune":
      for rule in FLAGS.finetune_rules:
        _train(rule, os.path.join(root, rule), timing, f"--config.init_from={base}")
        _eval(os.path.join(root, rule), "", [], timing, f"eval_finetune_{rule}")
    elif stage == "report":
      report(root, FLAGS.docs, timing)
    else:
      raise app.UsageError(f"unknown stage {stage!r}; use base, zero_shot, finetune, report")
    # Two invocations may run side by side (--stages=zero_shot and --stages=finetune): merge, do not clobber.
    on_disk = json.load(open(timing_path)) if os.path.isfile(timing_path) else {}
    timing = {**on_disk, **timing}
    with open(timing_path, "w") as f:
      json.dump(timing, f, indent=1)
  print(f"stages {FLAGS.stages} took {time.time() - t:.0f}s")


if __name__ == "__main__":
  app.run(main)
