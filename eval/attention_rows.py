"""The attention probabilities of chosen query positions, per layer: what the diagnosis benchmarks read
(benchmarks/extension_diagnosis.py, benchmarks/passkey_copy_heads.py)."""

import jax
import jax.numpy as jnp


def layer_attention(model, tokens, query_pos):
  """tokens [B, T], query_pos [B] -> per layer, the attention probabilities of each row's query [B, N, T].

  Dense within each layer's mask (causal, and a local layer's window); a DSA layer's row is its dense one,
  before the top-k."""
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  x, rows = model.embed(tokens), []  # [B, T, D]
  for block in model.blocks:
    q, k, _, _ = block.attn._qkv(block._pre(x), positions)  # [B, T, N, H], [B, T, K, H]: rotated, scaled
    q = jnp.take_along_axis(q, query_pos[:, None, None, None], axis=1)[:, 0]  # [B, N, H]
    k = jnp.repeat(k, q.shape[1] // k.shape[2], axis=2)  # GQA: one key head per query head
    s = jnp.einsum("bnh,bsnh->bns", q, k) * q.shape[-1] ** -0.5
    keys, query = jnp.arange(t)[None, None], query_pos[:, None, None]
    keep = keys <= query  # causal
    if block.attn.mask.window is not None:  # a local layer sees only its window's left side
      keep &= keys >= query - block.attn.mask.window[0]
    s = jnp.where(keep, s, -jnp.inf)
    rows.append(jax.nn.softmax(s, axis=-1))
    x, _ = block(x, positions)
  return rows
