"""The 128K memory plan of docs/results.md: runs benchmarks.train_memory for each row (one process per row, one
JSON per row under --out, rows already measured are kept), then writes the table (--out/table.md) and
the plot (--out/train_memory.png) from those JSON files only.

Compile-only, on the CPU compiler (see benchmarks/train_memory.py); a 1B step at 128K compiles in
minutes on 2 cores, so only the rows below are measured.

  python -m benchmarks.train_memory_table [--out=docs/results/train_memory] [--only_table]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

K = 1024
# (preset, seq_len, remat, loss_chunk_tokens, attention_pattern, context)
ROWS = [  # most needed first: the sweep may be stopped and resumed
    ("decoder_125m", 128 * K, "full", 8192, "G", 1),
    ("decoder_1b", 128 * K, "full", 8192, "G", 1),
    ("decoder_125m", 8 * K, "none", 0, "G", 1),
    ("decoder_125m", 8 * K, "full", 8192, "G", 1),
    ("decoder_125m", 32 * K, "none", 8192, "G", 1),
    ("decoder_125m", 32 * K, "full", 8192, "G", 1),
    ("decoder_1b", 128 * K, "full", 8192, "G", 8),
    ("decoder_125m", 128 * K, "full", 8192, "LG", 1),
    ("decoder_125m", 128 * K, "full", 8192, "D", 1),
    ("decoder_125m", 128 * K, "full", 0, "G", 1),
    ("decoder_1b", 32 * K, "full", 8192, "G", 1),
    ("decoder_125m", 32 * K, "dots", 8192, "G", 1),
    ("decoder_125m", 32 * K, "attention_out", 8192, "G", 1),
    ("decoder_125m", 128 * K, "dots", 8192, "G", 1),
    ("decoder_125m", 128 * K, "attention_out", 8192, "G", 1),
    ("decoder_1b", 8 * K, "full", 8192, "G", 1),
    ("decoder_1b", 128 * K, "full", 8192, "LG", 1),
    ("decoder_1b", 128 * K, "full", 8192, "D", 1),
    ("decoder_125m", 128 * K, "full", 8192, "G", 8),
    ("decoder_125m", 32 * K, "full", 8192, "D", 1),
    ("decoder_125m", 32 * K, "full", 8192, "LG", 1),
]
GIB = 2**30
LIMITS = (80, 141)


def row_path(out, row) -> str:
  preset, length, remat, chunk, pattern, context = row
  return os.path.join(out, f"{preset}_{length}_{remat}_c{chunk}_{pattern}_cp{context}.json")


def measure_rows(out: str):
  for row in ROWS:
    path = row_path(out, row)
    if os.path.exists(path):
      continue
    preset, length, remat, chunk, pattern, context = row
    cmd = [sys.executable, "-m", "benchmarks.train_memory", f"--preset={preset}", f"--seq_len={length}",
           f"--remat={remat}", f"--loss_chunk_tokens={chunk}", f"--attention_pattern={pattern}",
           f"--context={context}", f"--json={path}"]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=False)


def write_table(out: str):
  rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "*.json")))]
  rows.sort(key=lambda r: (r["preset"], r["context"], r["seq_len"], r["attention_pattern"], r["remat"],
                           r["loss_chunk_tokens"]))
  lines = [f"Compiled bytes of one training step (forward, backward, AdamW update; batch 1; bf16 compute, f32 "
           f"params and moments), per device, from the CPU compiler ({rows[0]['machine'] if rows else ''}).",
           "", "| preset | tokens | pattern | remat | loss chunk | context devices | arguments GiB | temp GiB | "
           "total GiB | fits 80 GB | fits 141 GB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    total = r["total_bytes"] / GIB
    fits = ["yes" if r["total_bytes"] <= lim * 1e9 else "no" for lim in LIMITS]
    lines.append(f"| {r['preset']} | {r['seq_len']} | {r['attention_pattern']} | {r['remat']} | "
                 f"{r['loss_chunk_tokens'] or 'one chunk'} | {r['context']} | {r['argument_bytes'] / GIB:.2f} | "
                 f"{r['temp_bytes'] / GIB:.2f} | {total:.2f} | {fits[0]} | {fits[1]} |")
  # The longest row that fits each limit, by a straight line through a series' two longest measured rows
  # (attention, activations and loss chunks are all linear in the length here): an extrapolation.
  series = {}
  for r in rows:
    key = (r["preset"], r["attention_pattern"], r["remat"], r["loss_chunk_tokens"], r["context"])
    series.setdefault(key, []).append((r["seq_len"], r["total_bytes"]))
  fit = []
  for key, pts in sorted(series.items()):
    if len(pts) < 2:
      continue
    (l1, b1), (l2, b2) = sorted(pts)[-2:]
    slope = (b2 - b1) / (l2 - l1)
    longest = [int(l2 + (lim * 1e9 - b2) / slope) for lim in LIMITS]
    fit.append(f"- {key[0]} {key[1]} remat={key[2]} chunk={key[3] or 'one'} context={key[4]}: "
               f"{slope * 1024 / GIB:.3f} GiB per 1K tokens; longest row fitting 80 GB ~ {longest[0] // 1024}K "
               f"tokens, 141 GB ~ {longest[1] // 1024}K (extrapolated from {l1} and {l2})")
  if fit:
    lines += ["", "Longest length that fits, by a line through each series' two longest rows:", ""] + fit
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  _plot(rows, os.path.join(out, "train_memory.png"))


def _plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  series = {}
  for r in rows:
    key = (r["preset"], r["attention_pattern"], r["remat"], r["loss_chunk_tokens"], r["context"])
    series.setdefault(key, []).append((r["seq_len"], r["total_bytes"] / GIB))
  for key, pts in sorted(series.items()):
    pts.sort()
    label = f"{key[0]} {key[1]} remat={key[2]} chunk={key[3] or 'none'}" + (f" cp={key[4]}" if key[4] > 1 else "")
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
  for lim in LIMITS:
    ax.axhline(lim * 1e9 / GIB, color="gray", ls="--", lw=0.8)
    ax.text(8 * K, lim * 1e9 / GIB, f" {lim} GB", va="bottom", fontsize=8, color="gray")
  ax.set(xscale="log", yscale="log", xlabel="tokens per row", ylabel="GiB per device (one train step)")
  ax.set_xticks([8 * K, 32 * K, 128 * K], ["8K", "32K", "128K"])
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="docs/results/train_memory")
  parser.add_argument("--only_table", action="store_true", help="do not measure missing rows")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if not args.only_table:
    measure_rows(args.out)
  write_table(args.out)


if __name__ == "__main__":
  main()
