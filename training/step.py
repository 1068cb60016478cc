"""Objectives and the jitted train / eval steps (functional: params and optimizer state are pytrees).

Causal LM for the decoder, masked LM for the encoder (the target rules of training.targets), with the
cross-entropy of training.loss (config.loss_chunk_tokens tokens at a time). Losses are token sums divided by the token count of the whole
optimizer step, so accumulating gradients over microbatches gives the same update as one large batch.
The NaN/Inf guard keeps params and optimizer moments untouched on a bad step and counts it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from training import loss as loss_lib
from training.config import TrainConfig
from training.targets import lm_targets, mlm_targets


def make_apply(graphdef, abstract_params: nnx.State) -> Callable:
  """(params pure dict, batch) -> (features [B, T, D], head (w [D, V], bias [V] | None), aux dict).

  The model stops before its output projection: training.loss applies it chunk by chunk.
  """

  def apply(params, batch):
    state = jax.tree.map(lambda v: v, abstract_params)  # a fresh State to fill; the template stays abstract
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state)
    x, aux = model.features(batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                            return_aux=True)
    return x, model.head(), aux

  return apply


def make_objective(config: TrainConfig, apply: Callable, tokenizer) -> Callable:
  """(params, batch, rng, nan_scale) -> (summed loss incl. aux, (token-summed CE, token count, aux))."""
  mlm = config.model.arch == "encoder"

  def objective(params, batch, rng, nan_scale):
    if mlm:
      inputs, targets, weights = mlm_targets(batch, rng, rate=config.data.mlm_rate, mask_id=tokenizer.mask_id,
                                             num_regular=tokenizer.num_regular_tokens)
    else:
      inputs, targets, weights = lm_targets(batch)
    x, (w, bias), aux = apply(params, inputs)
    ce, _ = loss_lib.cross_entropy(x, w, bias, targets, weights, chunk_tokens=config.loss_chunk_tokens)  # [B, T]
    ce_sum = jnp.sum(ce) * nan_scale
    count = jnp.sum(weights)
    aux_sum = sum(aux.values()) if aux else jnp.zeros((), jnp.float32)
    # Aux losses are per-batch means; weighting them by the token count keeps them means after division.
    return ce_sum + aux_sum * count, (ce_sum, count, aux_sum)

  return objective


def init_state(params, tx: optax.GradientTransformation, seed: int) -> dict:
  """The full training state: everything a checkpoint must hold to resume bit for bit."""
  return {
      "params": params,
      "opt_state": tx.init(params),
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(jax.random.key(seed)),
      "skipped_steps": jnp.zeros((), jnp.int32),
      "consecutive_skips": jnp.zeros((), jnp.int32),
  }


def make_train_step(config: TrainConfig, objective: Callable, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
  """state, batch (arrays [A, B/A, T], A = grad_accum_steps) -> (new state, metrics dict of scalars)."""
  inject = jnp.asarray(config.inject_nan_steps or (-1,), jnp.int32)

  def train_step(state, batch):
    params, step = state["params"], state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    nan_scale = jnp.where(jnp.any(inject == step + 1), jnp.nan, 1.0)  # test hook: steps count from 1
    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def micro(carry, xs):
      grads, ce, count, aux = carry
      mb, i = xs
      (_, (mb_ce, mb_count, mb_aux)), mb_grads = grad_fn(params, mb, jax.random.fold_in(rng, i), nan_scale)
      grads = jax.tree.map(jnp.add, grads, mb_grads)
      return (grads, ce + mb_ce, count + mb_count, aux + mb_aux), None

    accum = batch["tokens"].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    (grads, ce, count, aux), _ = jax.lax.scan(micro, init, (batch, jnp.arange(accum)))
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    loss = ce / count
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    applied = step - state["skipped_steps"]  # updates applied so far: the schedule's position
    new_state = {
        "params": keep(new_params, params),
        "opt_state": keep(new_opt, state["opt_state"]),
        "step": step + 1,
        "rng": state["rng"],
        "skipped_steps": state["skipped_steps"] + (~ok).astype(jnp.int32),
        "consecutive_skips": jnp.where(ok, 0, state["consecutive_skips"] + 1),
    }
    metrics = {"loss": loss, "aux_loss": aux / accum, "grad_norm": grad_norm, "learning_rate": schedule(applied),
               "tokens": count}
    return new_state, metrics

  return train_step


def make_eval_step(objective: Callable, seed: int) -> Callable:
  """params, batch [B, T] -> (token-summed CE, token count); a fixed rng so MLM validation is comparable."""

  def eval_step(params, batch):
    _, (ce, count, _) = objective(params, batch, jax.random.key(seed + 1), 1.0)
    return ce, count

  return eval_step
