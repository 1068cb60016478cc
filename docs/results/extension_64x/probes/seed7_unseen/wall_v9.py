"""The whole-seed wall time of recipe v9 on this machine, estimated from seed 7's own CPU times: global and
local/global from its timed v8 run (seed7.json; unchanged by v9), DSA from its v9 chain (v9/seed7.json),
through the report's estimator (benchmarks.extension_64x.wall_estimate). Writes wall_v9.json; the same
estimator fed seed7.json alone is compared with that run's measured wall (wall.json).
    python docs/results/extension_64x/probes/seed7_unseen/wall_v9.py   (from the repository root)"""
import json
import os

from absl import flags

from benchmarks import extension_64x

HERE = os.path.dirname(os.path.abspath(__file__))
flags.FLAGS(["wall_v9"])  # the benchmark's flag defaults (wall_estimate reads its lengths)
v8 = json.load(open(os.path.join(HERE, "seed7.json")))
v9 = json.load(open(os.path.join(HERE, "v9", "seed7.json")))
timing = {"global": v8["timing"]["global"], "local": v8["timing"]["local"], "dsa": v9["timing"]["dsa"]}
out = {"v9_estimate": extension_64x.wall_estimate([{"timing": timing}]),
       "v8_estimate": extension_64x.wall_estimate([{"timing": v8["timing"]}]),
       "v8_measured_wall_s": json.load(open(os.path.join(HERE, "wall.json")))["wall_s"]}
with open(os.path.join(HERE, "wall_v9.json"), "w") as f:
  json.dump(out, f, indent=1)
print({k: round(v["wall_s"] / 60, 1) if isinstance(v, dict) else round(v / 60, 1) for k, v in out.items()})
