"""Progressive extension to 64x, per seed and variant: base at L0 = 128, 8x_rand and 8x (1024), 16x, 32x,
64x (8192); base, 8x and 64x evaluated at L0 x 1, 2, 4, ..., 64 (passkey by depth, MQAR by gap,
perplexity, and the lightning indexer's recall for DSA); the merged report is docs/extension_64x.json (min
and mean over seeds).

python -m benchmarks.extension_64x --seeds=0                 # train + eval + cost for seed 0: global, local, dsa
python -m benchmarks.extension_64x --seeds=1 --variants=dsa  # one seed, one variant (resumable)
python -m benchmarks.extension_64x --stages=report            # merge every seed file -> docs/extension_64x.json

Stages (each skips work whose results exist, so a rerun resumes):
  train    per (seed, variant, rule): train.py --config=configs/extend_64x.py:STAGE,VARIANT,RULE
           --config.seed=SEED for STAGE = base, (base_rand for local,) 8x_rand, 8x, 16x, 32x, 64x under
           ROOT/seedSEED/VARIANT/ (extend_64x.chain), each restoring the previous (--config.init_from); a
           stage run that restored anything else or was trained with other model/data/optim settings (an
           older recipe's run) is refused before anything trains
  eval     python -m eval on base, 8x and 64x at every length: the base without scaling is the zero-shot row;
           with yarn, 64x once more at YaRN attention_factor 1.6 (extend_64x.EVAL_TEMPERATURE; tag t1.6,
           reported as stage "64x@t1.6"); for DSA the 64x read also measures the indexer's recall
  cost     per variant: the compiled bytes of one fine-tune step (batch 1) at 8x and 64x L0
           (benchmarks/train_memory.measure) and the measured seconds per step of the 8x and 64x stages
  collect  ROOT/seedSEED -> RESULTS/seedSEED.json (every number of that seed, with the commands' timing)
  report   RESULTS/seed*.json -> OUT (min and mean over the seeds), the plots and the Markdown table
Each subprocess is printed with its log file as it starts.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys

from absl import app, flags, logging

from benchmarks.common import latest_step, run_logged
from training import restore

from configs import extend_64x

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/ext64", "Where the runs live: ROOT/seedSEED/VARIANT/STAGE.")
flags.DEFINE_list("seeds", ["0"], "Training seeds (config.seed).")
flags.DEFINE_list("variants", ["global", "local", "dsa"],
                  "global, local, dsa; the levers dsa_rope, dsa_plain, dsa_gd, local_lg, dsa_ld and dsa_local "
                  "(configs/extend_64x.py).")
flags.DEFINE_list("rules", ["yarn"], "Extension rules: yarn and/or abf (configs/extend_64x.py).")
flags.DEFINE_list("stages", ["train", "eval", "cost", "collect", "report"], "Stages to run, in order.")
flags.DEFINE_list("lengths", None, "Evaluation lengths (default: L0 x 1, 2, 4, ..., 64).")
flags.DEFINE_integer("passkey_samples", 20, "Passkey keys per (length, depth): 5 depths x 20 = 100 prompts.")
flags.DEFINE_integer("mqar_samples", 16, "MQAR rows per length (one pair per 16 tokens: 512 pairs at 8192).")
flags.DEFINE_integer("ppl_documents", 8, "Held-out documents per length for perplexity.")
flags.DEFINE_string("results", "docs/results/extension_64x", "Per-seed JSON files (collect writes, report reads).")
flags.DEFINE_string("out", "docs/extension_64x.json", "The merged report.")
flags.DEFINE_string("plots", "docs/results", "Where the report's plots and table go.")
flags.DEFINE_bool("tiny", False, "The configs' tiny stages (L0 = 32, 2 steps): the suite's dry run.")

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTED = extend_64x.REPORTED  # base, 8x, 64x: evaluated, costed (but the base) and reported
RECALL_PASSKEY = ("passkey_digit", "passkey_digits_2_5")  # eval/indexer_recall.py's passkey recalls
RECALL_READ = REPORTED[-1]  # the read that also measures a DSA indexer's recall (64x as trained)


def config_arg(stage: str, variant: str, rule: str) -> str:
  rule = [rule] if extend_64x.STAGES[stage] > 1 else []  # base and base_rand take no rule
  return ",".join([stage, variant] + rule + (["tiny"] if FLAGS.tiny else []))


def workdir(root: str, seed: int, variant: str, stage: str, rule: str) -> str:
  rule_free = extend_64x.STAGES[stage] == 1  # base, base_rand: every rule restores the same run
  return os.path.join(root, f"seed{seed}", variant, stage if rule_free else f"{stage}_{rule}")


def lengths() -> list[int]:
  if FLAGS.lengths:
    return [int(n) for n in FLAGS.lengths]
  l0 = extend_64x.TINY_L0 if FLAGS.tiny else extend_64x.L0
  return [l0 * 2**i for i in range(7)]


def _init_from(root: str, seed: int, variant: str, stage: str, rule: str) -> str:
  prev = extend_64x.previous(stage, variant)
  return workdir(root, seed, variant, prev, rule) if prev else ""


def check_chain(root: str, seed: int, variant: str, rule: str):
  """Refuse, before training anything, a stage run that this recipe would not have made: one that restored
  another run than the previous stage, or whose model, data or optimiser settings differ from the config's
  now (a run of an older recipe). Resuming it would mix two recipes in one chain."""
  from training.config import from_config_dict  # pylint: disable=g-import-not-at-top  (jax)
  for stage in extend_64x.chain(variant):
    wd, want = workdir(root, seed, variant, stage, rule), _init_from(root, seed, variant, stage, rule)
    if latest_step(wd) is None:
      continue
    saved = restore.saved_config(wd)[1]
    have = saved.get("init_from") or ""
    if os.path.realpath(have or ".") != os.path.realpath(want or "."):  # a relative or an absolute root
      raise app.UsageError(f"{wd} restored {have!r}, but this recipe's {stage} stage restores {want!r} "
                           "(a run of an older recipe?): move it away to retrain it")
    saved = from_config_dict(saved).to_dict()  # keys added since the run was saved take their defaults
    recipe = from_config_dict(extend_64x.get_config(config_arg(stage, variant, rule))).to_dict()
    for section in ("model", "data", "optim"):
      for key, value in recipe[section].items():
        if saved[section][key] != value:
          raise app.UsageError(f"{wd} was trained with {section}.{key}={saved[section][key]!r}, but this "
                               f"recipe's {stage} stage sets {value!r} (a run of an older recipe?): move it "
                               "away to retrain it")


def train(root: str, seed: int, variant: str, rule: str, timing: dict):
  """The stages of one (seed, variant, rule), each restoring the one before."""
  for stage in extend_64x.chain(variant):
    wd, arg = workdir(root, seed, variant, stage, rule), config_arg(stage, variant, rule)
    if latest_step(wd) == extend_64x.get_config(arg).num_steps:
      continue
    init_from = _init_from(root, seed, variant, stage, rule)
    init = [f"--config.init_from={init_from}"] if init_from else []
    run_logged([sys.executable, "train.py", f"--config=configs/extend_64x.py:{arg}", f"--workdir={wd}",
                f"--config.seed={seed}", *init], wd + ".log", timing, f"train_{os.path.basename(wd)}", cwd=ROOT_DIR)


def _tasks(variant: str, name: str) -> list[str]:
  """The eval tasks of read `name` (reads()): the indexer's recall for DSA's 64x read only, the stage whose
  selection at 64x is the question (about half of that read's 7 CPU minutes)."""
  recall = variant.startswith("dsa") and name == RECALL_READ
  return ["perplexity", "passkey", "mqar"] + (["indexer_recall"] if recall else [])


def _eval_dir(wd: str, tag: str = "") -> str:
  return os.path.join(wd, "eval", str(latest_step(wd)), *([tag] if tag else []))


def reads(rule: str) -> list[tuple[str, str, str, list[str]]]:
  """The evaluations of a chain: (name, stage, eval tag, eval overrides). Every REPORTED stage as trained;
  with yarn also extend_64x.EVAL_TEMPERATURE's stage read at its YaRN attention_factor, named "64x@t1.6"."""
  out = [(stage, stage, "", []) for stage in REPORTED]
  stage, factor = extend_64x.EVAL_TEMPERATURE
  if rule == "yarn":
    override = f"--config.model.rope_scaling.attention_factor={factor}"
    out.append((f"{stage}@t{factor}", stage, f"t{factor}", [override]))
  return out


def _evaluated(wd: str, variant: str, name: str, tag: str = "") -> bool:
  return os.path.isfile(os.path.join(_eval_dir(wd, tag), _tasks(variant, name)[-1] + ".json"))  # no run: eval/None


def evaluate(root: str, seed: int, variant: str, rule: str, timing: dict):
  for name, stage, tag, overrides in reads(rule):
    wd = workdir(root, seed, variant, stage, rule)
    if _evaluated(wd, variant, name, tag):
      continue
    run_logged([sys.executable, "-m", "eval", f"--workdir={wd}", f"--lengths={','.join(map(str, lengths()))}",
                f"--tasks={','.join(_tasks(variant, name))}", f"--ppl_documents={FLAGS.ppl_documents}",
                f"--passkey_samples={FLAGS.passkey_samples}", f"--mqar_samples={FLAGS.mqar_samples}",
                *([f"--tag={tag}"] if tag else []), *overrides],
               wd + (f".{tag}" if tag else "") + ".eval.log", timing,
               f"eval_{os.path.basename(wd)}" + (f"@{tag}" if tag else ""), cwd=ROOT_DIR)


def step_seconds(wd: str) -> float | None:
  """Median step_time_s of a run's logged steps, the first (compile) left out."""
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  times = [r["step_time_s"] for r in map(json.loads, open(path)) if "step_time_s" in r and r["step"] > 1]
  return statistics.median(times) if times else None


def cost(root: str, seed: int, variant: str, rule: str) -> dict:
  """Compiled bytes of a batch-1 fine-tune step at 8x and 64x, and the stages' measured seconds per step."""
  from benchmarks import train_memory  # pylint: disable=g-import-not-at-top  (jax only for this stage)
  from training.config import from_config_dict  # pylint: disable=g-import-not-at-top
  out = {}
  for stage in REPORTED[1:]:
    c = extend_64x.get_config(config_arg(stage, variant, rule))
    batch = c.data.batch_size  # the stage's own batch, which its measured step_s is for
    c.data.batch_size = 1
    c.mesh.update(data=1, fsdp=1, tensor=1, context=1)
    m = train_memory.measure(from_config_dict(c))
    out[str(c.data.seq_len)] = {"compiled_bytes_batch1": m["total_bytes"], "temp_bytes_batch1": m["temp_bytes"],
                                "step_s": step_seconds(workdir(root, seed, variant, stage, rule)), "batch_size": batch}
  return out


def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def stage_result(wd: str, tag: str = "") -> dict:
  """One evaluated stage -> {"passkey", "mqar", "ppl"} by length (+ "indexer_recall" where it was measured:
  older reads have it at every stage), and the detail."""
  d = _eval_dir(wd, tag)
  r = {t: _read(os.path.join(d, t + ".json")) for t in ("perplexity", "passkey", "mqar", "indexer_recall")
       if os.path.isfile(os.path.join(d, t + ".json"))}
  out = {"passkey": {str(n): a for n, a in zip(r["passkey"]["lengths"], r["passkey"]["accuracy_per_length"])},
         "mqar": {str(n): a for n, a in zip(r["mqar"]["lengths"], r["mqar"]["accuracy"])},
         "ppl": {str(n): p for n, p in zip(r["perplexity"]["lengths"], r["perplexity"]["perplexity"])},
         "passkey_by_depth": {str(n): dict(zip(map(str, r["passkey"]["depths"]), row))
                              for n, row in zip(r["passkey"]["lengths"], r["passkey"]["accuracy"])},
         "mqar_by_gap": {str(n): a for n, a in zip(r["mqar"]["lengths"], r["mqar"]["by_gap"])},
         "step": latest_step(wd), "step_s": step_seconds(wd)}
  if "indexer_recall" in r:
    ir = r["indexer_recall"]
    # One DSA layer per model here: the recall of its top-k (a list over layers in the task's JSON).
    out["indexer_recall"] = {"mqar_value": {str(n): v[0] for n, v in zip(ir["lengths"], ir["mqar_value"])},
                             "mqar_key": {str(n): v[0] for n, v in zip(ir["lengths"], ir["mqar_key"])},
                             **{m: {str(n): v[0] for n, v in zip(ir["lengths"], ir[m]) if v is not None}
                                for m in RECALL_PASSKEY if m in ir},  # digits 2-5: not in older evals
                             "mqar_value_by_gap": {str(n): v[0] for n, v in zip(ir["lengths"],
                                                                                ir["mqar_value_by_gap"])},
                             "top_k": ir["top_k"]}
  return out


def collect(root: str, seed: int, previous: dict | None = None) -> dict:
  """Every variant of one seed found under root (not only --variants): the seed's file is whole. Runs do not
  outlive their machine, so a (variant, rule) whose runs are gone from root keeps its entry from `previous`
  (the seed's file as it was), listed under "kept"."""
  out = {"seed": seed, "L0": lengths()[0], "lengths": lengths(), "variants": {}, "cost": {}, "timing": {},
         "eval": {"passkey_prompts_per_length": 5 * FLAGS.passkey_samples, "mqar_rows": FLAGS.mqar_samples,
                  "ppl_documents": FLAGS.ppl_documents},
         "machine": f"{os.cpu_count()}-core CPU (wall_s: elapsed; cpu_s: user+sys of the stage's processes)"}
  for variant in extend_64x.VARIANTS:
    path = os.path.join(root, f"seed{seed}", variant, "timing.json")
    if os.path.isfile(path):
      timing = _read(path)
      out["cost"][variant] = timing.pop("cost", None)
      out["timing"][variant] = timing
    for rule in extend_64x.RULES:
      # (name, workdir, tag) of every read; the chain counts once its REPORTED stages are evaluated, and the
      # temperature read joins it once it is evaluated too
      runs = [(name, workdir(root, seed, variant, stage, rule), tag) for name, stage, tag, _ in reads(rule)]
      if all(_evaluated(wd, variant, name) for name, wd, _ in runs if name in REPORTED):
        out["variants"].setdefault(variant, {})[rule] = {name: stage_result(wd, tag) for name, wd, tag in runs
                                                         if _evaluated(wd, variant, name, tag)}
  wall = os.path.join(root, f"seed{seed}", "wall.json")  # benchmarks/extension_64x_seed.sh's whole-seed run
  if os.path.isfile(wall):
    out["wall"] = _read(wall)
  if previous:
    out["kept"] = []
    for variant, rules in previous["variants"].items():
      for rule, stages in rules.items():
        if rule not in out["variants"].get(variant, {}):
          out["variants"].setdefault(variant, {})[rule] = stages
          out["kept"].append(f"{variant}/{rule}")
    for key in ("cost", "timing"):
      for variant, v in previous.get(key, {}).items():
        if v and not out[key].get(variant):
          out[key][variant] = v
    if "wall" in previous and "wall" not in out:
      out["wall"] = previous["wall"]
  return out


def wall_estimate(per_seed: list[dict], variants=("global", "local", "dsa"), rule: str = "yarn",
                  cores: int = 2) -> dict:
  """The whole-seed wall time of benchmarks/extension_64x_seed.sh (one process per variant), estimated from
  the seeds' measured CPU seconds: per variant, the sum over the commands of its chain and reads of the
  slowest seed's cpu_s (a resumed run logs only its own part), then the processes share `cores` fairly."""
  cpu, missing = {}, []
  for v in variants:
    names = [os.path.basename(workdir("", 0, v, s, rule)) for s in extend_64x.chain(v)]
    commands = [f"train_{n}" for n in names] + [
        f"eval_{os.path.basename(workdir('', 0, v, stage, rule))}" + (f"@{tag}" if tag else "")
        for _, stage, tag, _ in reads(rule)]
    times = {c: [r["timing"][v][c]["cpu_s"] for r in per_seed if c in r.get("timing", {}).get(v, {})]
             for c in commands}
    missing += [f"{v}/{c}" for c, t in times.items() if not t]
    cpu[v] = sum(max(t) for t in times.values() if t)
  left, wall = dict(cpu), 0.0
  while left:  # fair sharing: each of n processes runs at min(1, cores / n) of a core until one finishes
    rate = min(1.0, cores / len(left))
    step = min(left.values()) / rate
    wall += step
    left = {v: t - step * rate for v, t in left.items() if t - step * rate > 1e-9}
  return {"cpu_s": cpu, "wall_s": wall, "cores": cores, "missing": missing}


def merge(per_seed: list[dict]) -> dict:
  """Seed files -> the issue's schema: every numeric leaf of a stage as {"min", "mean"} over the seeds that
  ran it (a cell lists its own seeds when fewer than all ran it)."""
  seeds = [r["seed"] for r in per_seed]
  out = {"L0": per_seed[0]["L0"], "lengths": per_seed[0]["lengths"], "seeds": seeds, "variants": {},
         "cost": {}, "eval": per_seed[0]["eval"], "machine": per_seed[0]["machine"]}
  for r in per_seed:
    for variant, rules in r["variants"].items():
      for rule, stages in rules.items():
        for stage, res in stages.items():
          cell = out["variants"].setdefault(variant, {}).setdefault(rule, {}).setdefault(stage, {"seeds": []})
          cell["seeds"].append(r["seed"])
          for metric in ("passkey", "mqar", "ppl"):
            for n, v in res[metric].items():
              cell.setdefault(metric, {}).setdefault(n, []).append(v)
          for metric, by_len in res.get("indexer_recall", {}).items():
            if metric in ("mqar_value", "mqar_key") + RECALL_PASSKEY:
              for n, v in by_len.items():
                cell.setdefault("indexer_recall", {}).setdefault(metric, {}).setdefault(n, []).append(v)
    for variant, c in r.get("cost", {}).items():
      if c:
        out["cost"].setdefault(variant, {})[str(r["seed"])] = c
  summarise = lambda v: {"min": min(v), "mean": sum(v) / len(v)}
  for rules in out["variants"].values():
    for stages in rules.values():
      for cell in stages.values():
        for metric in ("passkey", "mqar", "ppl"):
          cell[metric] = {n: summarise(v) for n, v in cell[metric].items()}
        for metric, by_len in cell.get("indexer_recall", {}).items():
          cell["indexer_recall"][metric] = {n: summarise(v) for n, v in by_len.items()}
  out["per_seed"] = {str(r["seed"]): r["variants"] for r in per_seed}
  out["timing"] = {str(r["seed"]): r["timing"] for r in per_seed}
  out["wall"] = {str(r["seed"]): r["wall"] for r in per_seed if "wall" in r}
  out["wall_estimate"] = wall_estimate(per_seed)
  return out


def plot(report: dict, path: str):
  """Passkey and MQAR exact match vs length, one column per variant, a line per stage (mean over seeds) in a
  band from the minimum to the maximum seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  variants = list(report["variants"])
  fig, axes = plt.subplots(2, len(variants), figsize=(4 * len(variants), 6), squeeze=False)
  for j, variant in enumerate(variants):
    for r, (rule, stages) in enumerate(report["variants"][variant].items()):
      for stage in stages:
        if stage == "base" and r:  # every rule restores the same base: draw it once
          continue
        for i, metric in enumerate(("passkey", "mqar")):
          runs = [report["per_seed"][s][variant][rule][stage][metric] for s in map(str, report["seeds"])
                  if stage in report["per_seed"][s].get(variant, {}).get(rule, {})]
          ns = sorted({int(n) for r in runs for n in r})
          vals = [[r[str(n)] for r in runs if str(n) in r] for n in ns]
          mean = [sum(v) / len(v) for v in vals]
          ax = axes[i, j]
          ax.set_xticks(ns, [str(n) for n in ns], fontsize=7)
          name = f"{stage} ({rule})" if stage != "base" else "base, no scaling"
          seeds = ",".join(map(str, stages[stage]["seeds"]))
          line, = ax.plot(ns, mean, marker="o", label=f"{name}, seeds {seeds}")
          ax.fill_between(ns, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    for i, metric in enumerate(("passkey", "mqar")):
      ax = axes[i, j]
      ax.set_xscale("log", base=2)
      ax.set_ylim(-0.02, 1.02)
      ax.axvline(report["L0"], color="grey", linestyle=":", linewidth=1)
      ax.set_title(f"{variant}: {metric} (mean over seeds, band: min-max)", fontsize=9)
      ax.set_xlabel("evaluation length (tokens)")
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(report: dict) -> str:
  ns = [str(n) for n in report["lengths"]]
  head = ["variant", "rule", "stage", "seeds", "task"] + [f"@{n}" for n in ns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for variant, rules in report["variants"].items():
    for rule, stages in rules.items():
      for stage, cell in stages.items():
        seeds = ",".join(map(str, cell["seeds"]))
        rows = [(t, cell[t], True, seeds) for t in ("passkey", "mqar")] + [("ppl", cell["ppl"], False, seeds)]
        for m, v in cell.get("indexer_recall", {}).items():  # a recall added later: only the seeds that have it
          have = [s for s in map(str, cell["seeds"])
                  if m in report["per_seed"][s][variant][rule][stage].get("indexer_recall", {})]
          rows.append((f"indexer recall ({m})", v, True, ",".join(have)))
        for task, by_len, pct, over in rows:
          fmt = (lambda c: f"{c['min']:.0%} / {c['mean']:.0%}") if pct else (lambda c: f"{c['mean']:.2f}")
          lines.append("| " + " | ".join([variant, rule, stage, over, task] +
                                         [fmt(by_len[n]) if n in by_len else "-" for n in ns]) + " |")
  return "\n".join(lines)


def report():
  files = sorted(glob.glob(os.path.join(FLAGS.results, "seed*.json")))
  if not files:
    raise app.UsageError(f"no seed*.json in {FLAGS.results}: run the collect stage first")
  merged = merge([_read(f) for f in files])
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(merged, f, indent=1)
  os.makedirs(FLAGS.plots, exist_ok=True)
  plot(merged, os.path.join(FLAGS.plots, "extension_64x.png"))
  text = ("Cells: minimum / mean over the seeds of the row's seeds column (perplexity: mean).\n\n" + table(merged))
  for seed, w in merged["wall"].items():
    code = f"commit {w['commit']}" if "commit" in w else "a commit before recipe v4"  # older files lack it
    text += (f"\n\nSeed {seed}, the whole experiment ({', '.join(w['variants'])}; benchmarks/extension_64x_seed.sh,"
             f" {w['processes']} processes, started {w['start']}, {code}): {w['wall_s'] / 60:.0f} min wall on the "
             f"{merged['machine'].split(' (')[0]}.")
  est = merged["wall_estimate"]
  text += (f"\n\nThe whole experiment for one seed, estimated from every command's measured CPU time (the slowest "
           f"seed's; {', '.join(f'{v} {t / 60:.1f}' for v, t in est['cpu_s'].items())} CPU min), one process per "
           f"variant on {est['cores']} cores: {est['wall_s'] / 60:.0f} min wall"
           + (f" (no timing for {', '.join(est['missing'])})." if est["missing"] else "."))
  with open(os.path.join(FLAGS.plots, "extension_64x_table.md"), "w") as f:
    f.write(text + "\n")
  print(text)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = sorted(set(FLAGS.stages) - {"train", "eval", "cost", "collect", "report"}) + \
      sorted(set(FLAGS.variants) - set(extend_64x.VARIANTS)) + sorted(set(FLAGS.rules) - set(extend_64x.RULES))
  if unknown:
    raise app.UsageError(f"unknown stage, variant or rule {unknown}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every saved config it reads at INFO
  if "train" in FLAGS.stages:
    for seed in map(int, FLAGS.seeds):
      for variant in FLAGS.variants:
        for rule in FLAGS.rules:
          check_chain(FLAGS.root, seed, variant, rule)
  for seed in map(int, FLAGS.seeds):
    for stage in FLAGS.stages:
      for variant in FLAGS.variants:
        # One file per (seed, variant): runs of different variants may go side by side.
        path = os.path.join(FLAGS.root, f"seed{seed}", variant, "timing.json")
        timing = _read(path) if os.path.isfile(path) else {}
        for rule in FLAGS.rules:
          if stage == "train":
            train(FLAGS.root, seed, variant, rule, timing)
          elif stage == "eval":
            evaluate(FLAGS.root, seed, variant, rule, timing)
          elif stage == "cost" and rule == FLAGS.rules[0]:
            timing["cost"] = cost(FLAGS.root, seed, variant, rule)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
          json.dump(timing, f, indent=1)
      if stage == "collect":
        os.makedirs(FLAGS.results, exist_ok=True)
        path = os.path.join(FLAGS.results, f"seed{seed}.json")
        result = collect(FLAGS.root, seed, _read(path) if os.path.isfile(path) else None)
        with open(path, "w") as f:
          json.dump(result, f, indent=1)
  if "report" in FLAGS.stages:
    report()


if __name__ == "__main__":
  app.run(main)
