"""What every benchmark shares: one timing helper, one log-log plot, and the experiment drivers' way of
running a stage's command (run_logged) and finding a run's newest checkpoint (latest_step)."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
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


def _cpu_children() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def run_logged(argv: list[str], log: str, timing: dict, name: str, cwd: str):
  """Run a stage's command with its output appended to `log`; record its wall and CPU seconds (user + sys
  of the child) in timing[name]. Exits naming the log when the command fails."""
  print("+", " ".join(argv), f"> {log}", flush=True)
  os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
  t, c = time.time(), _cpu_children()
  with open(log, "a") as f:
    rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
  if rc:
    sys.exit(f"failed with exit status {rc} after {time.time() - t:.0f}s; see {log}")
  timing[name] = {"wall_s": round(time.time() - t, 1), "cpu_s": round(_cpu_children() - c, 1)}
  print(f"  done in {timing[name]['wall_s']:.0f}s wall, {timing[name]['cpu_s']:.0f}s CPU", flush=True)


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step directory of a train.py run (None if it has none)."""
  d = os.path.join(workdir, "checkpoints")
  steps = [int(s) for s in os.listdir(d) if s.isdigit()] if os.path.isdir(d) else []
  return max(steps) if steps else None
