"""A decoder-only causal LM in the Llama family (Touvron et al., arXiv 2302.13971): RMSNorm, SwiGLU, RoPE
with scaling, GQA, tied or untied embeddings, and a per-layer attention pattern (global, sliding-window,
DSA). Parameter names and maths follow Hugging Face LlamaForCausalLM so its weights import one to one
(models/hf_import.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.block import Block, model_norm, run_blocks
from models.config import ModelConfig
from models.inputs import prepare
from models.layers import Dense, Embed


def check_prefill_chunk(prefill_chunk) -> int:
  """Validate prefill_chunk (None, or an int >= 0; 0 and None mean the whole prompt at once); returns it as
  an int."""
  if prefill_chunk is None:
    return 0
  if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, (int, np.integer)) or prefill_chunk < 0:
    raise ValueError(f"prefill_chunk must be None or an int >= 0 (0: the whole prompt at once), got "
                     f"{prefill_chunk!r}")
  return int(prefill_chunk)


def _check_cache_len(tokens, cache_len, max_len):
  if cache_len > max_len or cache_len < tokens.shape[1]:
    raise ValueError(f"cache_len {cache_len} must be in [prompt length {tokens.shape[1]}, max_len {max_len}]")


class DecoderLM(nnx.Module):
  """tokens [B, T] -> next-token logits [B, T, V] (float32)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.arch != "decoder":
      raise ValueError(f"DecoderLM needs arch='decoder', got {cfg.arch!r}")
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
                       std=cfg.init_std)
    self.blocks = nnx.List([Block(cfg, t, rngs=rngs) for t in cfg.attention_pattern])
    self.final_norm = model_norm(cfg, rngs)
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

  def prefill(self, tokens, lengths, cache_len: int, *, prefill_chunk: int | None = None):
    """Right-padded prompts [B, T] (row b valid up to lengths[b]) -> (logits [B, T, V], KV cache).

    prefill_chunk: None or 0 runs the whole prompt at once; k > 0 runs it k tokens at a time
    (see prefill_last), here still returning every position's logits.
    """
    _check_cache_len(tokens, cache_len, self.cfg.max_len)
    prefill_chunk = check_prefill_chunk(prefill_chunk)
    feats, cache = self._prefill_chunks(tokens, lengths, cache_len, prefill_chunk, every_position=True)
    return self._project(feats), cache

  def prefill_last(self, tokens, lengths, cache_len: int, *, prefill_chunk: int | None = None):
    """Prefill for generation: (logits [B, V] float32 at each row's last prompt position, KV cache).

    The prompt runs prefill_chunk tokens at a time (None or 0: one chunk of T) in a lax.scan: each chunk's
    queries attend to the cache written so far and to the chunk, so activations and attention work arrays
    follow the chunk, not the prompt, and only the last position's logits are ever projected.
    """
    _check_cache_len(tokens, cache_len, self.cfg.max_len)
    prefill_chunk = check_prefill_chunk(prefill_chunk)
    last, cache = self._prefill_chunks(tokens, lengths, cache_len, prefill_chunk, every_position=False)
    return self._project(last[:, None])[:, 0], cache

  def _prefill_chunks(self, tokens, lengths, cache_len, prefill_chunk, *, every_position: bool):
    """(final features: [B, T, D] if every_position else [B, D] at lengths - 1, cache) chunk by chunk."""
    b, t = tokens.shape
    c = min(prefill_chunk or t, t)
    n_full, rest = divmod(t, c)
    lengths = jnp.asarray(lengths, jnp.int32)

    def run_chunk(carry, chunk, start):  # chunk [B, C'] token ids at positions start + arange(C')
      caches, last = carry
      x = self.embed(chunk)
      new = []
      for block, cache in zip(self.blocks, caches):
        x, cache = block.extend(x, start, lengths, cache)
        new.append(cache)
      x = self.final_norm(x)  # [B, C', D]
      i = lengths - 1 - start  # each row's last prompt position, relative to the chunk
      here = (i >= 0) & (i < chunk.shape[1])
      picked = jnp.take_along_axis(x, jnp.clip(i, 0, chunk.shape[1] - 1)[:, None, None], axis=1)[:, 0]
      return (new, jnp.where(here[:, None], picked, last)), (x if every_position else None)

    carry = ([block.attn.init_cache(b, cache_len) for block in self.blocks], jnp.zeros((b, self.cfg.d_model),
                                                                                       self.cfg.dtype))
    feats = []
    if n_full == 1:  # one chunk: a static start, so the attention's block maps stay static
      carry, y = run_chunk(carry, tokens[:, :c], 0)
      feats.append(y)
    elif n_full:
      chunks = jnp.moveaxis(tokens[:, :n_full * c].reshape(b, n_full, c), 1, 0)  # [n, B, C]
      starts = jnp.arange(n_full, dtype=jnp.int32) * c
      carry, ys = jax.lax.scan(lambda cr, xs: run_chunk(cr, *xs), carry, (chunks, starts))
      feats.append(None if ys is None else jnp.moveaxis(ys, 0, 1).reshape(b, n_full * c, -1))
    if rest:  # the last, shorter chunk: one more trace of the same body, outside the scan
      carry, y = run_chunk(carry, tokens[:, n_full * c:], n_full * c)
      feats.append(y)
    caches, last = carry
    cache = {"pos": lengths, "layers": caches}
    return (jnp.concatenate(feats, axis=1) if every_position else last), cache

  def decode_step(self, tokens, cache):
    """One token per row, tokens [B] at positions cache["pos"] -> (logits [B, V], cache one longer)."""
    pos = cache["pos"]
    x = self.embed(tokens[:, None])  # [B, 1, D]
    caches = []
    for block, layer_cache in zip(self.blocks, cache["layers"]):
      x, layer_cache = block.extend(x, pos, pos + 1, layer_cache)
      caches.append(layer_cache)
    return self._logits(x)[:, 0], {"pos": pos + 1, "layers": caches}
