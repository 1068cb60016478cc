"""Recall of the lightning indexer: does a DSA layer's top-k hold the key the answer needs, by length?

A sparse layer can only copy what its top-k selected. For each DSA layer of a decoder, over eval's fixed
rows (the same MQAR rows and passkey prompts as the mqar and passkey tasks):
  - mqar_value: the share of MQAR queries whose top-k holds the queried pair's value (the token the answer
    copies; with smeared keys the match lands there) -- also by gap bucket, as eval/mqar.py splits accuracy;
  - mqar_key: the share whose top-k holds the pair's key (the definition);
  - passkey_digit: the share of passkey prompts whose top-k, at the position that predicts the key's first
    digit, holds that digit in the needle;
  - passkey_digits_2_5: the same for the key's digits 2-5, each at the position that predicts it (the answer
    teacher-forced), averaged over the four: with smeared keys the induction match (the previous digit)
    lands on the needed digit itself, so this is what a sparse layer that copies the key by content needs.
The top-k is Attention.selection(): the model's own indexer, top_k, local keys (always held), mask, impl and
score precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import data as data_lib
from data import mqar as mqar_lib
from eval import mqar as mqar_eval
from eval import passkey as passkey_eval
from models import AttentionType


def dsa_layers(model) -> list[int]:
  return [i for i, b in enumerate(model.blocks) if b.attn.layer_type is AttentionType.DSA]


def selections(model, tokens) -> list[np.ndarray]:
  """tokens int [E, T] -> per DSA layer, its top-k keys of every query, int32 [E, T, top_k]."""

  @jax.jit
  def run(tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    x, out = model.embed(tokens), []  # [E, T, D]
    for block in model.blocks:
      if block.attn.layer_type is AttentionType.DSA:
        out.append(block.attn.selection(block._pre(x), positions))
      x, _ = block(x, positions)
    return out

  return [np.asarray(i) for i in run(jnp.asarray(tokens))]


def hits(indices: np.ndarray, rows: np.ndarray, queries: np.ndarray, wanted: np.ndarray) -> np.ndarray:
  """indices [E, T, k]; rows, queries, wanted int [Q] -> bool [Q]: is key `wanted` in query's top-k."""
  return np.any(indices[rows, queries] == wanted[:, None], axis=-1)


def indexer_recall(model, tokenizer, lengths: list[int], *, mqar_samples: int = 16, passkey_samples: int = 4,
                   gap_buckets: int = 4, prompt: str = "compact", batch_tokens: int = 16384) -> dict:
  """Per length (those long enough for an MQAR row) and DSA layer, the recalls in the module docstring."""
  layers = dsa_layers(model)
  if not layers:
    raise ValueError("the indexer_recall task needs a model with DSA layers (attention_pattern with 'D')")
  usable = mqar_eval.usable_lengths(lengths)
  out = {"layers": layers, "top_k": model.cfg.dsa_top_k, "local_keys": model.cfg.dsa_local_keys, "lengths": usable,
         "mqar_value": [], "mqar_key": [],
         "mqar_value_by_gap": [], "gap_edges": [], "passkey_digit": [], "passkey_digits_2_5": []}
  for n in usable:
    rows = max(1, batch_tokens // n)
    exs = [mqar_lib.mqar_example(tokenizer, n, mqar_eval.sample_seed(n, s)) for s in range(mqar_samples)]
    value, key, gaps = [[] for _ in layers], [[] for _ in layers], []
    for j in range(0, len(exs), rows):
      part = exs[j:j + rows]
      r = np.concatenate([np.full(len(e.query_positions), i) for i, e in enumerate(part)])
      q = np.concatenate([e.query_positions for e in part])
      g = np.concatenate([e.gaps for e in part])
      gaps.append(g)
      for layer, idx in enumerate(selections(model, np.stack([e.tokens for e in part]))):
        key[layer].append(hits(idx, r, q, q - g))
        value[layer].append(hits(idx, r, q, q - g + 1))
    gaps = np.concatenate(gaps)
    value = [np.concatenate(v) for v in value]
    out["mqar_value"].append([float(v.mean()) for v in value])
    out["mqar_key"].append([float(np.concatenate(k).mean()) for k in key])
    split = [mqar_eval.by_gap(v, gaps, n, gap_buckets) for v in value]  # per layer: (buckets, edges)
    out["mqar_value_by_gap"].append([buckets for buckets, _ in split])
    out["gap_edges"].append(split[0][1])
    first, later = (_passkey_digits(model, tokenizer, n, passkey_samples, prompt, rows)
                    if n >= passkey_eval.min_length(tokenizer, prompt) else (None, None))
    out["passkey_digit"].append(first)
    out["passkey_digits_2_5"].append(later)
  return out


def _passkey_digits(model, tokenizer, n: int, samples: int, prompt: str, rows: int):
  """Per DSA layer, the recall of the key's first digit and the mean recall of its digits 2-5 (docstring)."""
  exs = [data_lib.passkey_example(tokenizer, n, d, seed=passkey_eval.sample_seed(n, d, s), prompt=prompt)
         for d in passkey_eval.DEPTHS for s in range(samples)]
  found = []  # per batch, per layer: bool [E, 5], digit i found at the position that predicts it
  for j in range(0, len(exs), rows):
    part = exs[j:j + rows]
    # the answer is " " + key: answer_start + i predicts digit i, which sits at key_start + i in the needle
    q = np.array([[e.answer_start + i for i in range(5)] for e in part])  # [E, 5]
    digit = np.array([[e.key_start + i for i in range(5)] for e in part])  # [E, 5]
    row = np.repeat(np.arange(len(part)), 5)
    sel = selections(model, np.stack([e.tokens for e in part]))
    found.append([hits(idx, row, q.ravel(), digit.ravel()).reshape(-1, 5) for idx in sel])
  per_layer = [np.concatenate([f[layer] for f in found]) for layer in range(len(found[0]))]  # [P, 5] each
  return [float(h[:, 0].mean()) for h in per_layer], [float(h[:, 1:].mean()) for h in per_layer]
