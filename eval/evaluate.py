"""evaluate(): restore a checkpoint, run the evaluation tasks, write their JSON results and PNG plots.

The library behind `python -m eval` (eval/__main__.py holds only its flags), so tests and drivers can call
it without defining absl flags.
"""

from __future__ import annotations

import json
import os
import sys
import time

import data as data_lib
from eval import indexer_recall, mlm, mqar, passkey, perplexity, plots
from training import restore

TASKS = ("perplexity", "passkey", "mqar", "mlm", "indexer_recall")


def evaluate(workdir: str, *, step: int | None = None, tasks: list[str] | None = None,
             lengths: list[int] | None = None, overrides: dict | None = None, tag: str = "",
             ppl_documents: int = 16, passkey_samples: int = 5, passkey_depths=passkey.DEPTHS,
             mqar_samples: int = 16) -> dict:
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
      res = passkey.passkey_grid(r.model, tokenizer, lengths, depths=tuple(passkey_depths), samples=passkey_samples,
                                 prompt=cfg.data.passkey_prompt)
      plots.passkey_heatmap(res, os.path.join(out_dir, "passkey.png"), title=title)
    elif task == "mqar":
      res = mqar.mqar_accuracy(r.model, tokenizer, lengths, samples=mqar_samples)
    elif task == "indexer_recall":
      res = indexer_recall.indexer_recall(r.model, tokenizer, lengths, mqar_samples=mqar_samples,
                                          passkey_samples=passkey_samples, prompt=cfg.data.passkey_prompt)
    else:
      res = mlm.mlm_accuracy(r.model, cfg, tokenizer, lengths)
    res["seconds"] = time.perf_counter() - t
    results[task] = dict(res, meta=meta)
    with open(os.path.join(out_dir, f"{task}.json"), "w") as f:
      json.dump(results[task], f, indent=1)
    print(f"{task} done in {res['seconds']:.0f}s -> {out_dir}", file=sys.stderr, flush=True)
  return results


def summary(results: dict) -> str:
  lines = []
  if "perplexity" in results:
    p = results["perplexity"]
    lines.append(f"validation loss {p['validation_loss']:.4f} nats/token: train.py's packed validation rows, "
                 "the number training reports (not the tokens scored below)")
    lines.append(f"perplexity over {p['documents']} x {p['lengths'][-1]} held-out tokens, cut into windows of each "
                 f"length ({p['protocol']}):")
    lines += [f"perplexity @ {n:>6}: {ppl:9.3f}   bits/byte {bpb:.3f}"
              for n, ppl, bpb in zip(p["lengths"], p["perplexity"], p["bits_per_byte"])]
  if "passkey" in results:
    p = results["passkey"]
    lines += [f"passkey @ {n:>6}: {acc:.0%}" for n, acc in zip(p["lengths"], p["accuracy_per_length"])]
  if "mqar" in results:
    p = results["mqar"]
    lines += [f"mqar @ {n:>6}: {acc:.1%}" for n, acc in zip(p["lengths"], p["accuracy"])]
  if "indexer_recall" in results:
    p = results["indexer_recall"]
    lines += [f"indexer recall @ {n:>6} (top-{p['top_k']}, layers {p['layers']}): MQAR value {v}, passkey digit {d}"
              f", digits 2-5 {d5}"
              for n, v, d, d5 in zip(p["lengths"], p["mqar_value"], p["passkey_digit"], p["passkey_digits_2_5"])]
  if "mlm" in results:
    p = results["mlm"]
    lines += [f"mlm accuracy @ {n:>6}: {acc:.3f}" for n, acc in zip(p["lengths"], p["accuracy"])]
  return "\n".join(lines)
