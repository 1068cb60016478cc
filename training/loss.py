"""Softmax cross-entropy of the output projection, chunk by chunk over the tokens.

At 128K tokens and a 128K vocabulary the logits alone are B x T x V float32 = 67 GB per row; like
torchtitan's chunked loss and Cut Cross-Entropy (Wijmans et al., arXiv 2411.09009) this never builds
them: a lax.scan walks `chunk_tokens` tokens at a time, projects them to [C, V] logits, reduces them to a
loss per token, and under jax.checkpoint the backward pass recomputes each chunk's logits instead of
storing them. Peak memory follows C x V, not T x V. Trainer and eval scorers both call this.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunk_ce(x, w, bias, targets, weights, with_argmax: bool):
  """x [C, D], w [D, V] -> (weighted CE [C] float32, argmax [C] int32 or None)."""
  logits = jnp.einsum("cd,dv->cv", x.astype(jnp.float32), w)  # [C, V]
  if bias is not None:
    logits = logits + bias
  label = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]  # [C]
  ce = (jax.nn.logsumexp(logits, axis=-1) - label) * weights
  return ce, (jnp.argmax(logits, axis=-1).astype(jnp.int32) if with_argmax else None)


def cross_entropy(features, w, bias, targets, weights, *, chunk_tokens: int = 0, with_argmax: bool = False):
  """Per-token softmax cross-entropy of logits = features @ w (+ bias), times weights.

  Args:
    features: [B, T, D] the model's final features (model.features()).
    w: [D, V] float32 output projection (model.head()[0]; tied or untied embeddings alike).
    bias: [V] float32 or None.
    targets: [B, T] int target ids.
    weights: [B, T] float32; 0 where a position has no target.
    chunk_tokens: tokens per chunk over the flattened B * T tokens; 0 (or >= B * T) builds all logits at once.
    with_argmax: also return the argmax token per position (eval's accuracy).
  Returns:
    (CE [B, T] float32 with weights applied, argmax [B, T] int32 or None).
  """
  if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 0:
    raise ValueError(f"chunk_tokens must be an int >= 0, got {chunk_tokens!r}")
  b, t, d = features.shape
  n = b * t
  flat = lambda a: a.reshape((n,) + a.shape[2:])
  x, tgt, wts = flat(features), flat(targets).astype(jnp.int32), flat(weights).astype(jnp.float32)
  if chunk_tokens == 0 or chunk_tokens >= n:
    ce, am = _chunk_ce(x, w, bias, tgt, wts, with_argmax)
  else:
    c = chunk_tokens
    chunks = -(-n // c)
    pad = chunks * c - n  # zero-weight tokens completing the last chunk
    split = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((chunks, c) + a.shape[1:])

    @jax.checkpoint  # keep only the chunk's inputs: the backward pass recomputes its [C, V] logits
    def body(carry, xs):
      xc, tc, wc = xs  # [C, D], [C], [C]
      return carry, _chunk_ce(xc, w, bias, tc, wc, with_argmax)

    _, (ce, am) = jax.lax.scan(body, None, (split(x), split(tgt), split(wts)))  # [chunks, C]
    ce = ce.reshape(-1)[:n]
    am = None if am is None else am.reshape(-1)[:n]
  return ce.reshape(b, t), (None if am is None else am.reshape(b, t))
