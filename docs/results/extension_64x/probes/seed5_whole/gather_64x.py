"""Collect levers_64x.sh's reads (and the recipe's own seed-5 DSA runs) into levers_64x.json: passkey per
length (with which key digits the misses got wrong), MQAR per length and perplexity at 128 and 8192."""
import collections
import json
import os

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repo root
RUNS = {  # name -> eval directory
  "8x stage (recipe v7 = v8)": "runs/ext64_s5/seed5/dsa/8x_yarn/eval/200",
  "32x stage (recipe v7 = v8), read at 128-512": "runs/ext64_s5/seed5/dsa/32x_yarn/eval/50/probe",
  "64x, recipe v7: 100 steps, lr constant, episodes from 8 L0": "runs/ext64_s5_v7/seed5/dsa/64x_yarn/eval/100",
  "ep2: episodes from 2 L0": "runs/s5_probe/dsa_64x_ep2/eval/100",
  "ep2_wsd: episodes from 2 L0, the last 25 steps decaying to 0": "runs/s5_probe/dsa_64x_ep2_wsd/eval/100",
  "ep2_wsd200: episodes from 2 L0, 200 steps, the last 50 decaying to 0":
      "runs/s5_probe/dsa_64x_ep2_wsd200/eval/200",
  "64x, recipe v8 (DSA_64X, the recipe's own run)": "runs/ext64_s5/seed5/dsa/64x_yarn/eval/200",
}


def read(d: str) -> dict:
  pk = json.load(open(os.path.join(d, "passkey.json")))
  out = {"passkey": {str(n): round(a, 3) for n, a in zip(pk["lengths"], pk["accuracy_per_length"])},
         "missed_digits": {}}
  for n in pk["lengths"]:
    wrong = collections.Counter(j + 1 for e in pk["examples"] if e["length"] == n
                                for j, (a, b) in enumerate(zip(e["key"], e["predicted"])) if a != b)
    if wrong:
      out["missed_digits"][str(n)] = dict(sorted(wrong.items()))
  if os.path.isfile(os.path.join(d, "mqar.json")):
    mq = json.load(open(os.path.join(d, "mqar.json")))
    out["mqar"] = {str(n): round(a, 3) for n, a in zip(mq["lengths"], mq["accuracy"])}
  if os.path.isfile(os.path.join(d, "perplexity.json")):
    pp = json.load(open(os.path.join(d, "perplexity.json")))
    out["ppl"] = {str(n): round(p, 3) for n, p in zip(pp["lengths"], pp["perplexity"]) if n in (128, 8192)}
  return out


if __name__ == "__main__":
  results = {name: read(d) for name, d in RUNS.items() if os.path.isdir(d)}
  path = "docs/results/extension_64x/probes/seed5_whole/levers_64x.json"
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  for name, r in results.items():
    print(f"{name}: passkey {r['passkey']}, mqar {r.get('mqar')}, ppl {r.get('ppl')}")
