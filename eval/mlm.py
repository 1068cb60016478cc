"""Masked-token accuracy of an encoder on held-out rows at each evaluation length.

ModernBERT's masking (Warner et al., arXiv 2412.13663: 30% of tokens, 80% MASK / 10% random / 10% kept),
applied with a fixed key by the trainer's own rule (training.targets.mlm_targets), to the packed validation
rows built at each length: accuracy is the argmax hitting the original token on the selected positions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import data as data_lib
from eval.perplexity import make_scorer
from training.config import TrainConfig
from training.targets import mlm_targets


def mlm_accuracy(model, config: TrainConfig, tokenizer, lengths: list[int], *, max_rows: int = 16,
                 seed: int = 0) -> dict:
  """{"lengths", "accuracy", "loss" (nats per masked token), "masked_tokens"} over the validation split."""
  if model.cfg.arch != "encoder":
    raise ValueError("the mlm task needs an encoder checkpoint (arch='encoder'); use --tasks=perplexity")
  score = make_scorer(model)
  result = {"lengths": sorted(set(lengths)), "accuracy": [], "loss": [], "masked_tokens": []}
  for n in result["lengths"]:
    splits = data_lib.load_splits(config.data.corpus, tokenizer, seq_len=n, val_fraction=config.data.val_fraction,
                                  seed=config.seed, max_documents=config.data.max_documents,
                                  text_field=config.data.text_field, bad_files=config.data.bad_files)
    rows = {k: jnp.asarray(v[:max_rows]) for k, v in splits.val.items()}  # [R, n]
    inputs, targets, weights = mlm_targets(rows, jax.random.key(seed), rate=config.data.mlm_rate,
                                           mask_id=tokenizer.mask_id, num_regular=tokenizer.num_regular_tokens)
    ce, argmax = score(inputs["tokens"], inputs["positions"], inputs["segment_ids"], targets, weights)
    w = np.asarray(weights)
    count = float(w.sum())
    result["accuracy"].append(float(((argmax == np.asarray(targets)) * w).sum() / max(count, 1.0)))
    result["loss"].append(float(ce.sum() / max(count, 1.0)) if count else math.nan)
    result["masked_tokens"].append(int(count))
  return result
