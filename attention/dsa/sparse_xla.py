"""Sparse attention over selected keys in plain JAX: gather-based, query-chunked, O(T*k) memory.

DeepSeek Sparse Attention (DeepSeek-V3.2-Exp report, sec. 2.1): query t attends over the keys in
indices[b, t] only, shared by every head. For each chunk of C queries the selected K/V rows are gathered
([B, C, k, K, H]) and a softmax over k slots is taken; the backward pass (custom_vjp) recomputes the
probabilities from the saved log-sum-exp and scatter-adds dK/dV into [B, S, K, H] accumulators. No array
ever has both a T and an S dimension, so cost and memory are O(T*k), whatever S is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from attention.dsa.rows import chunk_len, chunk_rows, gather_rows, scatter_add_rows, unchunk_rows

def default_chunk(batch, q_len, top_k, num_heads, kv_heads, head_dim, head_dim_v):
  """Queries per chunk: each holds its gathered K/V rows [B, k, K, H + Hv] and two [B, N, k] score tiles."""
  return chunk_len(q_len, batch * top_k * (kv_heads * (head_dim + head_dim_v) + 2 * num_heads))


def _probs(qc, kc, idx, lse, scale):
  """Scores of one chunk: qc [B, C, K, G, H], kc [B, C, k, K, H] -> (s, p) float32 [B, C, K, G, k].

  p is exp(s - lse) when lse [B, C, K, G] is given (backward), else None. Unselected slots (-1) get -inf.
  """
  s = jnp.einsum("bckgh,bcjkh->bckgj", qc, kc, preferred_element_type=jnp.float32) * scale
  s = jnp.where((idx >= 0)[:, :, None, None, :], s, -jnp.inf)
  return s, None if lse is None else jnp.exp(s - lse[..., None])


def _forward_chunk(q, k, v, idx, scale):
  """q [B, C, K, G, H], idx [B, C, k] -> out [B, C, K, G, Hv] float32, lse [B, C, K, G] (+inf: no key)."""
  safe = jnp.maximum(idx, 0)
  kc, vc = gather_rows(k, safe), gather_rows(v, safe)  # [B, C, k, K, H], [B, C, k, K, Hv]
  s, _ = _probs(q, kc, idx, None, scale)
  m = s.max(-1)
  m_safe = jnp.where(jnp.isneginf(m), 0.0, m)  # a query with no selected key
  p = jnp.exp(s - m_safe[..., None])
  l = p.sum(-1)
  out = jnp.einsum("bckgj,bcjkh->bckgh", p.astype(v.dtype), vc, preferred_element_type=jnp.float32)
  out = out / jnp.where(l == 0, 1.0, l)[..., None]
  return out, jnp.where(l > 0, m_safe + jnp.log(l), jnp.inf)


def _split_heads(x, kv_heads):
  """[B, T, N, H] -> [B, T, K, G, H]."""
  b, t, n, h = x.shape
  return x.reshape(b, t, kv_heads, n // kv_heads, h)


def sparse_forward(q, k, v, indices, *, scale, chunk_size=None):
  """Forward only: out [B, T, N, Hv] in q's dtype and lse [B, T, N] float32 (+inf for rows with no key)."""
  b, t, n, h = q.shape
  kvh, hv, top_k = k.shape[2], v.shape[-1], indices.shape[-1]
  c = chunk_size or default_chunk(b, t, top_k, n, kvh, h, hv)
  nc = -(-t // c)

  def one_chunk(args):
    qc, ic = args
    return _forward_chunk(_split_heads(qc, kvh), k, v, ic, scale)

  out, lse = lax.map(one_chunk, (chunk_rows(q, c, nc), chunk_rows(indices, c, nc)))
  return unchunk_rows(out, t).reshape(b, t, n, hv).astype(q.dtype), unchunk_rows(lse, t).reshape(b, t, n)


def sparse_backward(q, k, v, indices, out, lse, do, *, scale, chunk_size=None):
  """(dq, dk, dv) from the saved out and lse, recomputing each chunk's probabilities."""
  b, t, n, h = q.shape
  s_len, kvh, hv, top_k = k.shape[1], k.shape[2], v.shape[-1], indices.shape[-1]
  c = chunk_size or default_chunk(b, t, top_k, n, kvh, h, hv)
  nc = -(-t // c)
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # rowsum(dO * O) [B, T, N]

  def one_chunk(carry, args):
    dk, dv = carry
    qc, ic, doc, lc, dc = args
    qc, doc = _split_heads(qc, kvh), _split_heads(doc, kvh)  # [B, C, K, G, H], [B, C, K, G, Hv]
    lc, dc = lc.reshape(lc.shape[:2] + (kvh, -1)), dc.reshape(dc.shape[:2] + (kvh, -1))  # [B, C, K, G]
    safe = jnp.maximum(ic, 0)
    kc, vc = gather_rows(k, safe), gather_rows(v, safe)
    _, p = _probs(qc, kc, ic, lc, scale)  # [B, C, K, G, k]; 0 at unselected slots
    dp = jnp.einsum("bckgh,bcjkh->bckgj", doc, vc, preferred_element_type=jnp.float32)
    ds = p * (dp - dc[..., None]) * scale
    dq = jnp.einsum("bckgj,bcjkh->bckgh", ds.astype(k.dtype), kc, preferred_element_type=jnp.float32)
    # Summing over g gives GQA its dK/dV; unselected slots add zeros to row 0.
    dkc = jnp.einsum("bckgj,bckgh->bcjkh", ds.astype(q.dtype), qc, preferred_element_type=jnp.float32)
    dvc = jnp.einsum("bckgj,bckgh->bcjkh", p.astype(do.dtype), doc, preferred_element_type=jnp.float32)
    return (scatter_add_rows(dk, safe, dkc), scatter_add_rows(dv, safe, dvc)), dq

  init = (jnp.zeros((b, s_len, kvh, h), jnp.float32), jnp.zeros((b, s_len, kvh, hv), jnp.float32))
  xs = tuple(chunk_rows(x, c, nc) for x in (q, indices, do, lse, delta))
  (dk, dv), dq = lax.scan(one_chunk, init, xs)
  dq = unchunk_rows(dq, t).reshape(b, t, n, h)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sparse(q, k, v, indices, scale, chunk_size):
  return sparse_forward(q, k, v, indices, scale=scale, chunk_size=chunk_size)[0]


def _sparse_fwd(q, k, v, indices, scale, chunk_size):
  out, lse = sparse_forward(q, k, v, indices, scale=scale, chunk_size=chunk_size)
  return out, (q, k, v, indices, out, lse)


def _sparse_bwd(scale, chunk_size, res, do):
  q, k, v, indices, out, lse = res
  dq, dk, dv = sparse_backward(q, k, v, indices, out, lse, do, scale=scale, chunk_size=chunk_size)
  return dq, dk, dv, None


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


def sparse_xla(q, k, v, indices, *, scale, interpret, chunk_size=None):
  """Registry entry: differentiable in q, k, v (no gradient through the integer indices)."""
  del interpret
  return _sparse(q, k, v, indices, scale, chunk_size)
