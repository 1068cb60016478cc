"""Collect levers_8x.sh's reads (and seed 7's own DSA reads) into levers_8x.json: passkey per length with
which key digits the misses got wrong and what the first digit was guessed, MQAR, and the indexer's recall
of the key's first digit and of digits 2-5.   python gather_8x.py ROOT   (ROOT as given to levers_8x.sh)"""
import collections
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(sys.argv[1])
RUNS = {  # name -> eval directory under ROOT
  "base (recipe v8), read": "seed7/dsa/base/eval/4000/probe",
  "8x_rand (recipe v8), read": "seed7/dsa/8x_rand_yarn/eval/800/probe",
  "8x (recipe v8)": "seed7/dsa/8x_yarn/eval/200",
  "64x (recipe v8)": "seed7/dsa/64x_yarn/eval/200",
  "pk8x: 8x_rand and 8x with passkey 0.5 / MQAR 0.3": "probe8x/pk8x/8x/eval/200/probe",
  "base2: base_passkey and base_rand, then 8x_rand and 8x": "probe8x/base2/8x/eval/200/probe",
}


def read(d: str) -> dict:
  pk = json.load(open(os.path.join(d, "passkey.json")))
  out = {"passkey": {str(n): round(a, 3) for n, a in zip(pk["lengths"], pk["accuracy_per_length"])},
         "missed_digits": {}, "first_digit_guesses": {}}
  for n in pk["lengths"]:
    ex = [e for e in pk["examples"] if e["length"] == n]
    wrong = collections.Counter(j + 1 for e in ex for j, (a, b) in enumerate(zip(e["key"], e["predicted"])) if a != b)
    if wrong:
      out["missed_digits"][str(n)] = dict(sorted(wrong.items()))
      guesses = collections.Counter(e["predicted"][0] for e in ex if e["predicted"][0] != e["key"][0])
      out["first_digit_guesses"][str(n)] = dict(guesses.most_common(3))
  f = os.path.join(d, "mqar.json")
  if os.path.isfile(f):
    r = json.load(open(f))
    out["mqar"] = {str(n): round(a, 3) for n, a in zip(r["lengths"], r["accuracy"])}
  f = os.path.join(d, "indexer_recall.json")
  if os.path.isfile(f):
    r = json.load(open(f))
    for k in ("passkey_digit", "passkey_digits_2_5"):
      out[f"recall_{k}"] = {str(n): v[0] for n, v in zip(r["lengths"], r[k]) if v is not None}
  return out


if __name__ == "__main__":
  results = {}
  for name, d in RUNS.items():
    found = glob.glob(os.path.join(ROOT, d))
    if found:
      results[name] = read(found[0])
  with open(os.path.join(HERE, "levers_8x.json"), "w") as f:
    json.dump(results, f, indent=1)
  for name, r in results.items():
    print(f"{name}:\n  passkey {r['passkey']}\n  first-digit guesses {r['first_digit_guesses']}\n"
          f"  recall first digit {r.get('recall_passkey_digit')}, digits 2-5 {r.get('recall_passkey_digits_2_5')}")
