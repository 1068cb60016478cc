"""PNG plots of evaluation results: one run's perplexity curve and passkey heatmap, and comparisons of runs.

matplotlib with the Agg backend (files only, no display needed).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mark_train_length(ax, train_length):
  if train_length:
    ax.axvline(train_length, color="grey", linestyle=":", linewidth=1)
    ax.text(train_length, ax.get_ylim()[1], " train length", color="grey", va="top", fontsize=7)


def _length_axis(ax, lengths):
  ax.set_xscale("log", base=2)
  ax.set_xticks(lengths, [str(n) for n in lengths])
  ax.minorticks_off()


def perplexity_plot(result: dict, path: str, *, train_length: int | None = None, title: str = ""):
  """Perplexity and bits per byte vs evaluation length (result of eval.perplexity.perplexity_vs_length)."""
  fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
  for ax, key, label in ((a, "perplexity", "perplexity"), (b, "bits_per_byte", "bits per byte")):
    ax.plot(result["lengths"], result[key], marker="o")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(label)
    _length_axis(ax, result["lengths"])
    _mark_train_length(ax, train_length)
  fig.suptitle(title or "held-out perplexity vs length")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def passkey_heatmap(result: dict, path: str, *, title: str = ""):
  """Accuracy over length (x) x depth (y) (result of eval.passkey.passkey_grid)."""
  acc = np.asarray(result["accuracy"]).T  # [depths, lengths]
  fig, ax = plt.subplots(figsize=(1.2 + 0.7 * acc.shape[1], 3.2))
  im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="upper")
  ax.set_xticks(range(acc.shape[1]), [str(n) for n in result["lengths"]])
  ax.set_yticks(range(acc.shape[0]), [f"{d:.0%}" for d in result["depths"]])
  ax.set_xlabel("prompt length (tokens)")
  ax.set_ylabel("needle depth")
  for (i, j), v in np.ndenumerate(acc):
    ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=7)
  fig.colorbar(im, ax=ax, fraction=0.05)
  ax.set_title(title or f"passkey accuracy ({result['samples']} samples per cell)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def compare_plot(runs: dict[str, dict], key: str, path: str, *, ylabel: str, train_length: int | None = None,
                 title: str = "", log_y: bool = False, x_key: str = "lengths",
                 xlabel: str = "evaluation length (tokens)"):
  """One line per run: runs maps a label to a result dict holding `x_key` and `key` (lists of equal length).

  Labels ending in "+ft" are drawn solid, the others dashed, so each rule's pair reads at a glance. The
  x axis is log2 when x_key is "lengths", linear otherwise.
  """
  fig, ax = plt.subplots(figsize=(6.6, 3.6))
  colors = {}
  for label, r in runs.items():
    rule = label.removesuffix("+ft")
    color = colors.setdefault(rule, f"C{len(colors)}")
    ax.plot(r[x_key], r[key], marker="o", markersize=3, color=color,
            linestyle="-" if label.endswith("+ft") else "--", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale("log")
  if x_key == "lengths":
    _length_axis(ax, sorted({n for r in runs.values() for n in r["lengths"]}))
  _mark_train_length(ax, train_length)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a curve
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def passkey_heatmaps(runs: dict[str, dict], path: str, *, columns: int = 2):
  """A grid of passkey heatmaps (length x depth), one per labelled run; rows pair "RULE" with "RULE+ft"."""
  labels = list(runs)
  rows = -(-len(labels) // columns)
  first = runs[labels[0]]
  fig, axes = plt.subplots(rows, columns, figsize=(2.2 + 1.9 * columns, 0.4 + 1.5 * rows), squeeze=False)
  for ax, label in zip(axes.flat, labels):
    r = runs[label]
    acc = np.asarray(r["accuracy"]).T  # [depths, lengths]
    ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(acc.shape[1]), [str(n) for n in r["lengths"]], fontsize=6)
    ax.set_yticks(range(acc.shape[0]), [f"{d:.0%}" for d in r["depths"]], fontsize=6)
    for (i, j), v in np.ndenumerate(acc):
      ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=5)
    ax.set_title(label, fontsize=8)
  for ax in list(axes.flat)[len(labels):]:
    ax.axis("off")
  fig.suptitle(f"passkey accuracy, length (x) by needle depth (y), {first['samples']} keys per cell", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
