"""A ModernBERT-style bidirectional encoder with its masked-LM head (Warner et al., "Smarter, Better,
Faster, Longer", arXiv 2412.13663).

Embeddings + LayerNorm; pre-norm layers without biases, GeGLU MLPs; global attention (RoPE theta 160000)
every third layer and a (64, 64) sliding window (theta 10000) elsewhere; the first layer skips its
attention pre-norm; a final norm; the MLM head is dense -> gelu -> norm -> decoder tied to the embeddings
plus a bias. The maths follow Hugging Face ModernBertForMaskedLM so its weights import one to one.
ModernBERT's unpadding is expressed with segment ids: documents packed in a row, positions per document.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.block import Block, model_norm, run_blocks
from models.config import ModelConfig
from models.inputs import prepare
from models.layers import Dense, Embed, param


class Encoder(nnx.Module):
  """tokens [B, T] -> MLM logits [B, T, V] (float32)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.arch != "encoder":
      raise ValueError(f"Encoder needs arch='encoder', got {cfg.arch!r}")
    self.cfg = cfg
    kw = dict(rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
    self.embed = Embed(cfg.vocab_size, cfg.d_model, std=cfg.init_std, **kw)
    self.embed_norm = model_norm(cfg, rngs)
    self.blocks = nnx.List([Block(cfg, t, rngs=rngs, attn_norm=i > 0) for i, t in enumerate(cfg.attention_pattern)])
    self.final_norm = model_norm(cfg, rngs)
    self.head_dense = Dense((cfg.d_model,), (cfg.d_model,), names=("embed", None), std=cfg.init_std, **kw)
    self.head_norm = model_norm(cfg, rngs)
    self.decoder_bias = param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), cfg.param_dtype, ("vocab",))

  def head(self):
    """The MLM decoder as (w [D, V] float32, bias [V] float32), tied to the embeddings."""
    return self.embed.embedding[...].T.astype(jnp.float32), self.decoder_bias[...].astype(jnp.float32)

  def features(self, tokens, positions=None, segment_ids=None, *, return_aux: bool = False):
    """The MLM head's features [B, T, D] (after dense -> gelu -> norm) that head() projects, and {}.

    training.loss projects them chunk by chunk, so no [B, T, V] array exists at long lengths.
    """
    del return_aux  # the encoder has no auxiliary loss
    positions, segment_ids = prepare(tokens, positions, segment_ids, self.cfg.max_len)
    x = self.embed_norm(self.embed(tokens))  # [B, T, D]
    x, _ = run_blocks(self.blocks, x, positions, segment_ids, remat=self.cfg.remat)
    x = self.final_norm(x)
    return self.head_norm(jax.nn.gelu(self.head_dense(x), approximate=False)), {}

  def __call__(self, tokens, positions=None, segment_ids=None, *, return_aux: bool = False):
    """Bidirectional MLM forward.

    Args:
      tokens: [B, T] int token ids, T <= cfg.max_len.
      positions: [B, T] int; default arange(T), restarting per document with segment_ids.
      segment_ids: [B, T] int; tokens see only tokens with the same id (packing, or padding as id 0).
      return_aux: also return {} (the encoder has no auxiliary loss), for a uniform training loop.
    Returns:
      logits [B, T, V] float32, and {} when return_aux.
    """
    x, aux = self.features(tokens, positions, segment_ids)
    w, bias = self.head()
    logits = jnp.einsum("btd,dv->btv", x.astype(jnp.float32), w) + bias
    return (logits, aux) if return_aux else logits
