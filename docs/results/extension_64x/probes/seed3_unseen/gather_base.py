"""Collect base_levers.sh's reads into base_levers.json: passkey at 128 (with which key digits the misses got
wrong) and MQAR at 128, per run."""
import collections
import json
import os

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repo root
BASE = "runs/ext64/seed3/local/base"
RUNS = {  # name -> eval directory
  **{f"base, step {s}": f"{BASE}/eval/{s}/probe128" for s in (1000, 2000, 3000)},
  "base, step 4000 (the recipe's base)": f"{BASE}/eval/4000",
  "A: + 1000 steps, stride 2, lr 3e-4, passkey 0.5 / MQAR 0.3": "runs/probe_s3base/A_rand_pk50/eval/1000",
  "B: + 1000 steps, exact positions, lr 1e-3, passkey 0.5 / MQAR 0.3 (base_passkey)":
      "runs/probe_s3base/B_lr1e3_pk50/eval/1000",
  "C: + 1000 steps, stride 2, lr 1e-3, passkey 0.5 / MQAR 0.3": "runs/probe_s3base/C_rand_lr1e3_pk50/eval/1000",
  "E: + 1000 steps, stride 2, lr 1e-3, the base's mix": "runs/probe_s3base/E_rand_lr1e3/eval/1000",
}


def read(d: str) -> dict:
  out = {}
  pk = json.load(open(os.path.join(d, "passkey.json")))
  i = pk["lengths"].index(128)
  wrong = collections.Counter(j + 1 for e in pk["examples"] if e["length"] == 128
                              for j, (a, b) in enumerate(zip(e["key"], e["predicted"])) if a != b)
  out["passkey_128"] = round(pk["accuracy_per_length"][i], 3)
  out["missed_digit_counts"] = dict(sorted(wrong.items()))
  if os.path.isfile(os.path.join(d, "mqar.json")):
    mq = json.load(open(os.path.join(d, "mqar.json")))
    out["mqar_128"] = round(mq["accuracy"][mq["lengths"].index(128)], 3)
  return out


if __name__ == "__main__":
  results = {name: read(d) for name, d in RUNS.items()}
  path = "docs/results/extension_64x/probes/seed3_unseen/base_levers.json"
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  for name, r in results.items():
    print(f"{name}: {r}")
