"""Autoregressive generation with a KV cache: one prefill over the (right-padded) prompts, then one
decode step per new token, all inside a single jit (lax.scan over the steps).

Long prompts prefill `prefill_chunk` tokens at a time (DecoderLM.prefill_last: a lax.scan over chunks, each
attending to the cache written so far), so peak memory follows the chunk, not the prompt; only the last
prompt position's logits are projected either way.

Greedy decoding at temperature 0; otherwise temperature sampling restricted to the nucleus (top-p,
Holtzman et al., arXiv 1904.09751). Prompts of different lengths decode together: each row has its own
position, and the causal mask's per-row q_offset hides the padding left in the cache.

A library: generate.py (beside train.py) is the command that generates from a train.py run.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.decoder import check_prefill_chunk


def _sample(logits, rng, temperature: float, top_p: float):
  """logits [B, V] float32 -> token ids [B] int32."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)  # [B, V] best first
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    choice = jax.random.categorical(rng, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _pad_prompts(prompts, lengths):
  if isinstance(prompts, (list, tuple)):
    if lengths is not None:
      raise ValueError("lengths must be None when prompts is a list of token lists")
    if not prompts or any(len(p) < 1 for p in prompts):
      raise ValueError(f"prompts must be a non-empty list of non-empty token lists, got {prompts!r}")
    lengths = np.array([len(p) for p in prompts], np.int32)
    tokens = np.zeros((len(prompts), int(lengths.max())), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)] = p
    return jnp.asarray(tokens), jnp.asarray(lengths)
  tokens = jnp.asarray(prompts)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"prompts must be a list of token lists or an int array [B, T], got {tokens.shape}")
  if lengths is None:
    lengths = np.full((tokens.shape[0],), tokens.shape[1], np.int32)
  lengths = np.asarray(lengths)
  if lengths.shape != (tokens.shape[0],) or lengths.min() < 1 or lengths.max() > tokens.shape[1]:
    raise ValueError(f"lengths must be [B]={tokens.shape[0]} ints in [1, {tokens.shape[1]}], got {lengths!r}")
  return tokens.astype(jnp.int32), jnp.asarray(lengths, jnp.int32)


def generate(model, prompts, lengths=None, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             rng=None, eos_id: int | None = None, prefill_chunk: int | None = None):
  """Continue each prompt by max_new_tokens tokens.

  Args:
    model: a models.DecoderLM.
    prompts: a list of token lists (any lengths), or an int array [B, T] right-padded with `lengths` [B].
    max_new_tokens: number of tokens to generate per row.
    temperature: 0 for greedy decoding, else the softmax temperature.
    top_p: nucleus mass in (0, 1]; 1 samples from the whole distribution.
    rng: a jax PRNG key, required when temperature > 0.
    eos_id: once a row emits it, the rest of that row is eos_id.
    prefill_chunk: prompt tokens per prefill chunk; None or 0 prefills the whole prompt at once.
  Returns:
    int32 [B, max_new_tokens]: the new tokens only.
  """
  if getattr(model, "cfg", None) is None or model.cfg.arch != "decoder":
    raise ValueError("generate needs a decoder model (cfg.arch == 'decoder')")
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0, got {temperature!r}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
  if temperature > 0 and rng is None:
    raise ValueError("rng (a jax PRNG key) is required when temperature > 0")
  prefill_chunk = check_prefill_chunk(prefill_chunk)
  tokens, lengths = _pad_prompts(prompts, lengths)
  cache_len = tokens.shape[1] + max_new_tokens
  if cache_len > model.cfg.max_len:
    raise ValueError(f"prompt length {tokens.shape[1]} + max_new_tokens {max_new_tokens} = {cache_len} exceeds "
                     f"max_len {model.cfg.max_len}")
  rng = jax.random.key(0) if rng is None else rng
  graphdef, state = nnx.split(model)
  return _run(graphdef, state, tokens, lengths, rng, cache_len, max_new_tokens, float(temperature),
              float(top_p), eos_id, prefill_chunk)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10))
def _run(graphdef, state, tokens, lengths, rng, cache_len, max_new_tokens, temperature, top_p, eos_id,
         prefill_chunk):
  model = nnx.merge(graphdef, state)
  logits, cache = model.prefill_last(tokens, lengths, cache_len, prefill_chunk=prefill_chunk)  # [B, V]
  rng, sub = jax.random.split(rng)
  first = _sample(logits, sub, temperature, top_p)
  done = jnp.zeros_like(first, bool) if eos_id is None else first == eos_id

  def step(carry, _):
    tok, cache, rng, done = carry
    logits, cache = model.decode_step(tok, cache)
    rng, sub = jax.random.split(rng)
    nxt = _sample(logits, sub, temperature, top_p)
    if eos_id is not None:
      nxt = jnp.where(done, eos_id, nxt)
      done = done | (nxt == eos_id)
    return (nxt, cache, rng, done), nxt

  _, rest = jax.lax.scan(step, (first, cache, rng, done), None, length=max_new_tokens - 1)  # [N-1, B]
  return jnp.concatenate([first[:, None], rest.T], axis=1)


if __name__ == "__main__":
  print("error: models.generate is a library; generate from a train.py run with: python generate.py "
        "--workdir=DIR --prompt=TEXT [--max_new_tokens=N] [--step=N] [--temperature=T]", file=sys.stderr)
  sys.exit(2)
