"""Optimizer and learning-rate schedules.

AdamW (Loshchilov & Hutter, 2019) with global-norm gradient clipping. Schedules: linear warmup then cosine
decay to min_lr_ratio (the Chinchilla/GPT recipe), or warmup-stable-decay (Hu et al., 2024, "MiniCPM",
Sec. 4): a constant plateau and a short final decay, which lets a run be extended without restarting the
schedule.

DSA dense warm-up (DeepSeek-V3.2-Exp, sec. 2.1): the main model is frozen and only the lightning indexer
(its q_idx, k_idx and w_idx projections) is trained, by the KL loss alone; every other gradient is zeroed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from models import is_indexer_param
from models.config import AttentionType
from training.config import TrainConfig


def schedule(config: TrainConfig) -> optax.Schedule:
  """The learning rate as a function of the number of applied updates."""
  o, steps = config.optim, config.num_steps
  peak, floor = o.learning_rate, o.learning_rate * o.min_lr_ratio
  warmup = optax.linear_schedule(0.0, peak, max(o.warmup_steps, 1))
  if o.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif o.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, max(steps - o.warmup_steps, 1), alpha=o.min_lr_ratio)
  else:
    decay_steps = max(int(round(o.decay_fraction * steps)), 1)
    stable = max(steps - o.warmup_steps - decay_steps, 0)
    after = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay_steps)], [stable])
  if o.warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [o.warmup_steps])


def _decay_mask(params):
  """Weight decay on matrices only: norms' scales and biases (rank 1) are not decayed."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _indexer_labels(params):
  """"indexer" for the lightning indexer's parameters, "frozen" for everything else."""

  return jax.tree_util.tree_map_with_path(lambda path, _: "indexer" if is_indexer_param(path) else "frozen", params)


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Clip (if grad_clip > 0), then AdamW with the schedule; only the indexer in a DSA dense warm-up."""
  o = config.optim
  adamw = optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mask=_decay_mask)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw
  model = config.model
  if AttentionType.DSA in model.attention_pattern and model.dsa_phase == "dense_warmup":
    tx = optax.multi_transform({"indexer": tx, "frozen": optax.set_to_zero()}, _indexer_labels)
  return tx
