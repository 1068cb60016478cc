"""One pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x)), and the stack of them.

ModernBERT (arXiv 2412.13663) skips the attention pre-norm of its first layer, because the embeddings
are already normalised; `attn_norm=False` reproduces that. `run_blocks` applies cfg.remat per block
(activation checkpointing, Chen et al., arXiv 1604.06174; the per-layer "full" and selective
policies of Korthikanti et al., arXiv 2205.05198).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import Attention
from models.config import AttentionType, ModelConfig
from models.layers import GatedMLP, Norm


def model_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> Norm:
  """A norm over d_model of the model's kind (cfg.norm_kind, norm_eps, norm_bias): every norm of a model is one."""
  return Norm(cfg.d_model, kind=cfg.norm_kind, eps=cfg.norm_eps, use_bias=cfg.norm_bias, rngs=rngs,
              param_dtype=cfg.param_dtype, dtype=cfg.dtype)


class Block(nnx.Module):
  """A residual attention + gated-MLP layer of the given AttentionType."""

  def __init__(self, cfg: ModelConfig, layer_type: AttentionType, *, rngs: nnx.Rngs, attn_norm: bool = True):
    self.attn_norm = model_norm(cfg, rngs) if attn_norm else None
    self.attn = Attention(cfg, layer_type, rngs=rngs)
    self.mlp_norm = model_norm(cfg, rngs)
    self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, kind=cfg.mlp_kind, use_bias=cfg.mlp_bias, rngs=rngs,
                        param_dtype=cfg.param_dtype, dtype=cfg.dtype, std=cfg.init_std,
                        out_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5)

  def _pre(self, x):
    return x if self.attn_norm is None else self.attn_norm(x)

  def __call__(self, x, positions, segment_ids=None, *, with_aux: bool = False):
    """x [B, T, D] -> ([B, T, D], aux dict)."""
    y, aux = self.attn(self._pre(x), positions, segment_ids, with_aux=with_aux)
    return self._add_mlp(x + y), aux

  def extend(self, x, start, lengths, cache):
    """x [B, C, D] at positions start + arange(C) against the layer's KV cache -> ([B, C, D], cache);
    see Attention.extend."""
    y, cache = self.attn.extend(self._pre(x), start, lengths, cache)
    return self._add_mlp(x + y), cache

  def _add_mlp(self, x):
    """The MLP residual: x + mlp(norm(x))."""
    return x + self.mlp(self.mlp_norm(x))


# model.remat -> the jax.checkpoint policy (None: save nothing but the block's inputs).
_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def _remat(fn, policy):
  """jax.checkpoint(fn, policy) whose backward pass recomputes inside a lax.cond.

  XLA:CPU strips jax.checkpoint's optimization barriers and then CSEs the recomputation with the forward
  pass, so plain remat saves nothing there (jax-ml/jax#19822; measured: the same bytes per layer with and
  without it). A conditional is a computation of its own that CSE cannot merge, so running the backward's
  recomputation inside one (both branches identical, the predicate read from the cotangent so it cannot
  be folded) keeps the policy's saving on every backend, the CPU compiler's memory analysis included.
  """
  checkpointed = jax.checkpoint(fn, policy=policy)

  @jax.custom_vjp
  def call(*args):
    return fn(*args)

  def fwd(*args):
    return jax.vjp(checkpointed, *args)  # (out, vjp): vjp holds the inputs and what the policy saves

  def bwd(vjp, ct):
    pred = jnp.isfinite(jax.tree.leaves(ct)[0].reshape(-1)[0])
    return jax.lax.cond(pred, lambda v, c: v(c), lambda v, c: v(c), vjp, ct)

  call.defvjp(fwd, bwd)
  return call


def run_blocks(blocks, x, positions, segment_ids, *, remat: str, with_aux: bool = False):
  """x [B, T, D] through every block -> ([B, T, D], aux losses summed over the layers).

  With remat != "none" each block is one remat region: the backward pass keeps the block's input (and
  what the policy saves) and recomputes the rest, so stored activations grow with layers x tokens x D.
  """
  aux = {}
  for block in blocks:
    if remat == "none":
      x, layer_aux = block(x, positions, segment_ids, with_aux=with_aux)
    else:
      graphdef, state = nnx.split(block)
      # positions / segment_ids are integer inputs, never differentiated: closed over, not arguments.
      apply = lambda state, x: nnx.merge(graphdef, state)(x, positions, segment_ids, with_aux=with_aux)
      x, layer_aux = _remat(apply, _POLICIES[remat])(state, x)
    for name, value in layer_aux.items():  # each DSA layer trains its own indexer: the losses add up
      aux[name] = aux.get(name, 0.0) + value
  return x, aux
