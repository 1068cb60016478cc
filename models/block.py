"""One pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x)).

ModernBERT (arXiv 2412.13663) skips the attention pre-norm of its first layer, because the embeddings
are already normalised; `attn_norm=False` reproduces that.
"""

from __future__ import annotations

from flax import nnx

from models.attention_block import Attention
from models.config import AttentionType, ModelConfig
from models.layers import GatedMLP, Norm


class Block(nnx.Module):
  """A residual attention + gated-MLP layer of the given AttentionType."""

  def __init__(self, cfg: ModelConfig, layer_type: AttentionType, *, rngs: nnx.Rngs, attn_norm: bool = True):
    norm = lambda: Norm(cfg.d_model, kind=cfg.norm_kind, eps=cfg.norm_eps, use_bias=cfg.norm_bias, rngs=rngs,
                        param_dtype=cfg.param_dtype, dtype=cfg.dtype)
    self.attn_norm = norm() if attn_norm else None
    self.attn = Attention(cfg, layer_type, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, kind=cfg.mlp_kind, use_bias=cfg.mlp_bias, rngs=rngs,
                        param_dtype=cfg.param_dtype, dtype=cfg.dtype, std=cfg.init_std,
                        out_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5)

  def _pre(self, x):
    return x if self.attn_norm is None else self.attn_norm(x)

  def __call__(self, x, positions, segment_ids=None, *, with_aux: bool = False):
    """x [B, T, D] -> ([B, T, D], aux dict)."""
    y, aux = self.attn(self._pre(x), positions, segment_ids, with_aux=with_aux)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), aux

  def prefill(self, x, lengths, cache_len: int):
    y, cache = self.attn.prefill(self._pre(x), lengths, cache_len)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), cache

  def decode(self, x, pos, cache):
    y, cache = self.attn.decode(self._pre(x), pos, cache)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), cache
