"""Where a RoPE rule breaks retrieval: per layer, how the query that must produce the passkey's first digit
spreads its attention, for the base and each rule (zero-shot and fine-tuned).

python -m benchmarks.extension_diagnosis --root=runs/extension [--out=docs/results/extension_diagnosis.json]

For each run (ROOT/base with every rule applied as an eval override, and ROOT/RULE's fine-tuned
checkpoint) and length, over compact passkey prompts (eval's fixed seeds, depths 0..1): for every layer, the
attention row of the position whose next token is the key's first digit, averaged over heads and prompts:
  - entropy (nats), against ln(visible keys), the entropy of uniform attention;
  - needle_mass: the attention on the needle's tokens (the sentence that holds the key), max over heads;
  - digit_mass: the attention on the key's first digit in the needle (the token to copy), max over heads;
and the exact match of the whole key. With DSA layers also indexer_recall (eval/indexer_recall.py): per DSA
layer, how often the lightning indexer's top-k holds the queried pair's value and key. A rule that keeps the
needle_mass of the base at 8x keeps the key; one that flattens the row (entropy up towards uniform) or
points it elsewhere loses it.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import data as data_lib
from configs import extend
from data import passkey as passkey_lib
from eval import indexer_recall as ir
from eval.attention_rows import layer_attention
from eval import passkey as passkey_eval
from training import restore

flags.DEFINE_string("root", "runs/extension", "The experiment's root (benchmarks/extension_experiment.py).")
flags.DEFINE_list("rules", list(extend.ZERO_SHOT_RULES), "Rules applied zero-shot to ROOT/base.")
flags.DEFINE_list("lengths", [str(extend.L0), str(extend.L0 * extend.FACTOR)], "Prompt lengths.")
flags.DEFINE_integer("samples", 4, "Prompts per (length, depth).")
flags.DEFINE_string("out", "docs/results/extension_diagnosis.json", "Output JSON.")
FLAGS = flags.FLAGS
DEPTHS = passkey_eval.DEPTHS


def diagnose(model, tokenizer, length: int, samples: int) -> dict:
  exs = [passkey_lib.passkey_example(tokenizer, length, d, passkey_eval.sample_seed(length, d, s), "compact")
         for d in DEPTHS for s in range(samples)]
  tokens = jnp.asarray(np.stack([e.tokens for e in exs]))
  query = jnp.asarray([e.answer_start for e in exs])  # holds " ": its next token is the first digit
  rows = jax.jit(lambda t, qp: layer_attention(model, t, qp))(tokens, query)
  logits = jax.jit(model)(tokens)
  correct = [bool(np.all(np.argmax(np.asarray(logits[i, e.answer_start - 1:e.answer_start + e.answer_len - 1]), -1)
                         == e.tokens[e.answer_start:e.answer_start + e.answer_len])) for i, e in enumerate(exs)]
  needle, digit = np.zeros(tokens.shape, bool), np.zeros(tokens.shape, bool)
  for i, e in enumerate(exs):
    needle[i, e.needle_start:e.needle_start + e.needle_len] = True
    digit[i, e.key_start] = True
  layers = []
  for p in rows:  # [E, N, T]
    p = np.asarray(p, np.float64)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)  # [E, N]
    mass = lambda where: float(np.sum(p * where[:, None], -1).max(1).mean())  # max over heads, mean over prompts
    layers.append({"entropy": float(entropy.mean()), "needle_mass": mass(needle), "digit_mass": mass(digit)})
  visible = float(np.mean([e.answer_start + 1 for e in exs]))
  return {"uniform_entropy": math.log(visible), "passkey": float(np.mean(correct)), "layers": layers,
          "indexer_recall": ir.indexer_recall(model, tokenizer, [length], passkey_samples=samples)
          if ir.dsa_layers(model) else None}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tokenizer = data_lib.get_tokenizer()
  lengths = [int(n) for n in FLAGS.lengths]
  base = os.path.join(FLAGS.root, "base")
  l0 = restore.saved_config(base)[1]["data"]["seq_len"]
  runs = {}
  for rule in FLAGS.rules:
    overrides = {f"model.rope_scaling.{k}": v for k, v in extend.scaling(rule, l0).items()}
    runs[rule] = restore.restore(base, None, overrides, min_max_len=max(lengths)).model
    ft = os.path.join(FLAGS.root, rule)
    if os.path.isdir(os.path.join(ft, "checkpoints")):
      runs[rule + "+ft"] = restore.restore(ft, None, None, min_max_len=max(lengths)).model
  out = {"setup": __doc__.split("\n\n")[2].replace("\n", " "), "root": FLAGS.root, "runs": {}}
  for name, model in runs.items():
    out["runs"][name] = {str(n): diagnose(model, tokenizer, n, FLAGS.samples) for n in lengths}
    print(name, json.dumps({n: [(round(l["needle_mass"], 3), round(l["digit_mass"], 3)) for l in r["layers"]] +
                               [r["passkey"]]
                            for n, r in out["runs"][name].items()}), flush=True)
  with open(FLAGS.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
