"""Does DG's passkey miss where its sparse layer's top-k misses the key's digits? Per passkey prompt (the
eval's own 100 per length), whether the top-32 at the position that predicts each digit holds that digit in
the needle (eval/indexer_recall.py's passkey_digits_2_5, per prompt), joined with whether the model's
teacher-forced answer was right (the run's passkey.json). Writes dsa_digit_recall.json beside this file.

  python docs/results/extension_64x/probes/seed2_levers/dsa_digit_recall.py RUN[@TAG] ...   (default: seed
  2's dsa 64x); each RUN must have been evaluated with the passkey task at the lengths read here (under eval
  tag TAG).
"""
import json
import os
import sys

import numpy as np

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repo root
sys.path.insert(0, os.getcwd())
import data as data_lib  # noqa: E402  (after the chdir: the repo's packages)
from eval import indexer_recall as ir  # noqa: E402
from eval import passkey as passkey_eval  # noqa: E402
from training import restore  # noqa: E402

LENGTHS = (1024, 4096, 8192)
SAMPLES = 20  # per depth: the eval's 100 prompts per length


def per_prompt(wd: str, tag: str, n: int, tokenizer) -> dict:
  ev = os.path.join(wd, "eval")
  pk = json.load(open(os.path.join(ev, sorted(os.listdir(ev), key=int)[-1], tag, "passkey.json")))
  correct = {(e["depth"], e["key"]): e["correct"] for e in pk["examples"] if e["length"] == n}
  model = restore.restore(wd, None, None, min_max_len=n).model
  exs = [data_lib.passkey_example(tokenizer, n, d, seed=passkey_eval.sample_seed(n, d, s), prompt="compact")
         for d in passkey_eval.DEPTHS for s in range(SAMPLES)]
  found, rows = [], max(1, 16384 // n)
  for j in range(0, len(exs), rows):
    part = exs[j:j + rows]
    q = np.array([[e.answer_start + i for i in range(5)] for e in part])  # [E, 5]: predicts digit i
    digit = np.array([[e.key_start + i for i in range(5)] for e in part])  # [E, 5]: digit i in the needle
    (idx,) = ir.selections(model, np.stack([e.tokens for e in part]))  # DG: one sparse layer
    found.append(ir.hits(idx, np.repeat(np.arange(len(part)), 5), q.ravel(), digit.ravel()).reshape(-1, 5))
  found = np.concatenate(found)[:, 1:]  # [P, 4]: digits 2-5
  ok = np.array([correct[(float(d), e.key)] for d, e in zip(np.repeat(passkey_eval.DEPTHS, SAMPLES), exs)])
  all_in = found.all(axis=1)
  by_depth = {str(d): {"passkey": float(ok[i * SAMPLES:(i + 1) * SAMPLES].mean()),
                       "digits_2_5_all_selected": float(all_in[i * SAMPLES:(i + 1) * SAMPLES].mean()),
                       "digits_2_5_selected": float(found[i * SAMPLES:(i + 1) * SAMPLES].mean())}
              for i, d in enumerate(passkey_eval.DEPTHS)}
  return {"passkey": float(ok.mean()), "digits_2_5_selected": float(found.mean()),
          "digits_2_5_all_selected": float(all_in.mean()),
          "passkey_when_all_selected": float(ok[all_in].mean()) if all_in.any() else None,
          "passkey_when_one_missed": float(ok[~all_in].mean()) if (~all_in).any() else None,
          "prompts_with_a_miss": int((~all_in).sum()), "by_depth": by_depth}


def main(runs):
  tokenizer = data_lib.get_tokenizer()
  out = {}
  for run in runs:
    wd, _, tag = run.partition("@")
    out[wd] = {str(n): per_prompt(wd, tag, n, tokenizer) for n in LENGTHS}
    for n, r in out[wd].items():
      print(wd, n, {k: v for k, v in r.items() if k != "by_depth"})
  path = "docs/results/extension_64x/probes/seed2_levers/dsa_digit_recall.json"
  json.dump({"lengths": LENGTHS, "prompts_per_depth": SAMPLES, "runs": out}, open(path, "w"), indent=1)


if __name__ == "__main__":
  main(sys.argv[1:] or ["runs/ext64/seed2/dsa_rope/64x_yarn"])
