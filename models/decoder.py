"""A decoder-only causal LM in the Llama family (Touvron et al., arXiv 2302.13971): RMSNorm, SwiGLU, RoPE
with scaling, GQA, tied or untied embeddings, and a per-layer attention pattern (global, sliding-window,
DSA). Parameter names and maths follow Hugging Face LlamaForCausalLM so its weights import one to one
(models/hf_import.py).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models.block import Block, run_blocks
from models.config import ModelConfig
from models.inputs import prepare
from models.layers import Dense, Embed, Norm


class DecoderLM(nnx.Module):
  """tokens [B, T] -> next-token logits [B, T, V] (float32)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.arch != "decoder":
      raise ValueError(f"DecoderLM needs arch='decoder', got {cfg.arch!r}")
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
                       std=cfg.init_std)
    self.blocks = nnx.List([Block(cfg, t, rngs=rngs) for t in cfg.attention_pattern])
    self.final_norm = Norm(cfg.d_model, kind=cfg.norm_kind, eps=cfg.norm_eps, use_bias=cfg.norm_bias,
                           rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
    self.lm_head = None if cfg.tie_embeddings else Dense(
        (cfg.d_model,), (cfg.vocab_size,), names=("embed", "vocab"), rngs=rngs, param_dtype=cfg.param_dtype,
        dtype=jnp.float32, std=cfg.init_std)

  def head(self):
    """The output projection as (w [D, V] float32, bias None): logits = final features @ w."""
    w = self.embed.embedding[...].T if self.lm_head is None else self.lm_head.kernel[...]
    return w.astype(jnp.float32), None

  def _project(self, x):
    """Final features [B, T, D] -> logits [B, T, V] float32."""
    return jnp.einsum("btd,dv->btv", x.astype(jnp.float32), self.head()[0])

  def _logits(self, x):
    return self._project(self.final_norm(x))

  def features(self, tokens, positions=None, segment_ids=None, *, return_aux: bool = False):
    """The final-norm features [B, T, D] that head() projects to logits, and the aux dict.

    training.loss projects them chunk by chunk, so no [B, T, V] array exists at long lengths.
    """
    positions, segment_ids = prepare(tokens, positions, segment_ids, self.cfg.max_len)
    x = self.embed(tokens)  # [B, T, D]
    x, aux = run_blocks(self.blocks, x, positions, segment_ids, remat=self.cfg.remat, with_aux=return_aux)
    return self.final_norm(x), aux

  def __call__(self, tokens, positions=None, segment_ids=None, *, return_aux: bool = False):
    """Causal LM forward.

    Args:
      tokens: [B, T] int token ids, T <= cfg.max_len.
      positions: [B, T] int RoPE positions; default arange(T), restarting per document with segment_ids.
      segment_ids: [B, T] int; packed documents never attend to each other.
      return_aux: also return the dict of auxiliary losses to add to the objective ({"indexer_kl": x}
        with DSA layers, else {}).
    Returns:
      logits [B, T, V] float32, and the aux dict when return_aux.
    """
    x, aux = self.features(tokens, positions, segment_ids, return_aux=return_aux)
    logits = self._project(x)
    return (logits, aux) if return_aux else logits

  def prefill(self, tokens, lengths, cache_len: int):
    """Right-padded prompts [B, T] (row b valid up to lengths[b]) -> (logits [B, T, V], KV cache)."""
    if cache_len > self.cfg.max_len or cache_len < tokens.shape[1]:
      raise ValueError(f"cache_len {cache_len} must be in [prompt length {tokens.shape[1]}, max_len "
                       f"{self.cfg.max_len}]")
    x = self.embed(tokens)
    caches = []
    for block in self.blocks:
      x, cache = block.prefill(x, lengths, cache_len)
      caches.append(cache)
    return self._logits(x), {"pos": lengths.astype(jnp.int32), "layers": caches}

  def decode_step(self, tokens, cache):
    """One token per row, tokens [B] at positions cache["pos"] -> (logits [B, V], cache one longer)."""
    pos = cache["pos"]
    x = self.embed(tokens[:, None])  # [B, 1, D]
    caches = []
    for block, layer_cache in zip(self.blocks, cache["layers"]):
      x, layer_cache = block.decode(x, pos, layer_cache)
      caches.append(layer_cache)
    return self._logits(x)[:, 0], {"pos": pos + 1, "layers": caches}
