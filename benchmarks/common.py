"""What every benchmark shares: one timing helper and one log-log plot."""

from __future__ import annotations

import statistics
import time


def time_fn(fn, args, reps: int = 3) -> float:
  """Median wall seconds of `reps` calls of fn(*args), after one compile + warm-up call.

  Every call is waited for with jax.block_until_ready, so asynchronous dispatch is not mistaken for speed.
  """
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def loglog_plot(path: str, lengths, series: dict, ylabel: str, title: str):
  """Write a PNG of y against sequence length L on log2-log2 axes, one line per series entry."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for (label, ys), style in zip(series.items(), ("o-", "s--", "^-", "v:", "d-.")):  # dashes: overlapping lines
    ax.loglog(lengths, ys, style, label=label, base=2)
  ax.set_xlabel("sequence length L")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
