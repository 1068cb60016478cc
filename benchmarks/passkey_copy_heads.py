"""Which attention head copies each digit of the passkey: per run, layer and head, the attention that the
position producing digit i puts on digit i inside the needle (the token to copy), over compact passkey
prompts at eval's fixed seeds and depths.

python -m benchmarks.passkey_copy_heads --runs=runs/ext64/seed0/global/base,runs/ext64/seed1/global/base \
    --json=docs/results/extension_64x/probes/seed1_passkey_mechanism/copy_heads.json

Why: a model can copy digits 2-5 in two ways. Content induction (the smeared key at needle digit i holds
digit i-1, so the query "my token is digit i-1" finds it in one layer) does not depend on distances; a
layer-2 head that finds "the i-th token after the needle's 'is '" by its offset does, and any RoPE change
breaks it. The mass by layer tells which one a checkpoint uses.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import data as data_lib
from data import passkey as passkey_lib
from eval import passkey as passkey_eval
from eval.attention_rows import layer_attention
from training import restore

flags.DEFINE_list("runs", None, "train.py run directories (their newest checkpoint).", required=True)
flags.DEFINE_integer("length", 128, "Prompt length.")
flags.DEFINE_integer("prompts_per_depth", 8, "Prompts per needle depth.")
flags.DEFINE_integer("gather_window", 0, "Also read, for each of the last N prompt positions (the question), the "
                     "attention each layer and head puts on every key digit (0: not measured).")
flags.DEFINE_string("json", "docs/results/passkey_copy_heads.json", "Output JSON.")
FLAGS = flags.FLAGS


def _prompts(model, tokenizer, length: int, samples: int):
  """Eval's compact passkey prompts (samples per depth), their tokens [E, T] and a jitted layer_attention."""
  exs = [passkey_lib.passkey_example(tokenizer, length, d, passkey_eval.sample_seed(length, d, s), "compact")
         for d in passkey_eval.DEPTHS for s in range(samples)]
  return exs, jnp.asarray(np.stack([e.tokens for e in exs])), jax.jit(lambda t, qp: layer_attention(model, t, qp))


def _digit_mass(exs, tokens, rows, query_offset) -> list[list[list[float]]]:
  """[digit][layer][head]: mean attention of position answer_start + query_offset(i) on key digit i."""
  out = []
  for i in range(len(exs[0].key)):
    probs = rows(tokens, jnp.asarray([e.answer_start + query_offset(i) for e in exs]))  # per layer [E, N, T]
    target = np.array([e.key_start + i for e in exs])  # [E]
    out.append([np.asarray(p)[np.arange(len(exs)), :, target].mean(0).round(3).tolist() for p in probs])
  return out


def copy_mass(model, tokenizer, length: int, samples: int) -> list[list[list[float]]]:
  """[digit][layer][head]: mean attention of the query producing key digit i on that digit in the needle."""
  # answer_start holds " ": the position answer_start + i predicts key digit i.
  return _digit_mass(*_prompts(model, tokenizer, length, samples), lambda i: i)


def gather_mass(model, tokenizer, length: int, samples: int, window: int) -> dict[str, list]:
  """{offset: [digit][layer][head]} for offsets -window+1..0 before answer_start: the attention that a
  question position puts on each key digit. A model whose answer position never attends to the digits
  (copy_mass ~0) can still read them in two hops: a global layer gathers them into the question's
  positions and a later (local) layer reads them from there."""
  prompts = _prompts(model, tokenizer, length, samples)
  return {str(off): _digit_mass(*prompts, lambda i, off=off: off) for off in range(1 - window, 1)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tokenizer = data_lib.get_tokenizer()
  result = {"setup": __doc__.split("\n\n")[0].replace("\n", " "), "length": FLAGS.length,
            "prompts": FLAGS.prompts_per_depth * len(passkey_eval.DEPTHS), "runs": {}}
  for wd in FLAGS.runs:
    model = restore.restore(wd, None, None, min_max_len=FLAGS.length).model
    result["runs"][wd] = copy_mass(model, tokenizer, FLAGS.length, FLAGS.prompts_per_depth)
    for i, layers in enumerate(result["runs"][wd]):
      print(f"{wd} digit {i}: " + " | ".join(f"layer {l}: " + " ".join(f"{m:.2f}" for m in heads)
                                              for l, heads in enumerate(layers)))
    if FLAGS.gather_window:
      gathered = gather_mass(model, tokenizer, FLAGS.length, FLAGS.prompts_per_depth, FLAGS.gather_window)
      result.setdefault("gather", {})[wd] = gathered
      for off, digits in gathered.items():  # the question positions that hold a digit (> 0.2 in some head)
        if max(m for layers in digits for heads in layers for m in heads) > 0.2:
          print(f"{wd} question position {off}: max over layers and heads per digit "
                + " ".join(f"{max(max(h) for h in layers):.2f}" for layers in digits))
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
  with open(FLAGS.json, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
