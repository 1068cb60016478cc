"""The 128K CPU run numbers of docs/results.md, from the files benchmarks/train_128k_cpu.sh leaves in its workdir:
metrics.jsonl (train.py: seconds per step without compile, loss), time_*.txt (/usr/bin/time: wall and
CPU seconds, peak RSS of each invocation) and eval/STEP/perplexity.json (python -m eval).

  python -m benchmarks.train_128k_summary --workdir=runs/128k_G --json=docs/results/train_128k/G.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re


def summarize(workdir: str) -> dict:
  steps = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [r for r in steps if "step_time_s" in r]
  times = {}
  for path in sorted(glob.glob(os.path.join(workdir, "time_*.txt"))):
    text = open(path).read()
    m = re.search(r"wall ([\d.]+) s user ([\d.]+) s sys ([\d.]+) s maxrss (\d+) KB", text)
    if m is None:
      raise ValueError(f"{path}: no /usr/bin/time line (did the command fail?): {text[-300:]!r}")
    wall, user, sys_, rss = m.groups()
    times[os.path.basename(path)[5:-4]] = {"wall_s": float(wall), "cpu_s": float(user) + float(sys_),
                                           "max_rss_gb": int(rss) / 1e6}
  ppl = sorted(glob.glob(os.path.join(workdir, "eval", "*", "perplexity.json")))
  out = {"workdir": workdir, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared, loaded)",
         "steps": [{"step": r["step"], "step_time_s": r["step_time_s"], "loss": r.get("loss")} for r in steps],
         "invocations": times}
  if ppl:
    p = json.load(open(ppl[-1]))
    out["eval"] = {"file": os.path.relpath(ppl[-1], workdir), "lengths": p["lengths"], "perplexity": p["perplexity"],
                   "tokens": p["tokens"], "protocol": p.get("protocol")}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--json", required=True)
  args = parser.parse_args()
  result = summarize(args.workdir)
  os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
