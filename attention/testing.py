"""The kit tests and benchmarks share: fresh random inputs, the dense reference with lse, one error metric.

rel_err is the one metric: max |a - b| / max(max |b|, 1), float64. The floor of 1 compares a near-zero
reference (inputs are unit-normal; e.g. gradients under window (0, 0)) absolutely instead of relatively.
TOL holds the tolerance each dtype is held to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention import attend, reference
from attention.kernel_utils import default_scale
from attention.mask import Mask

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-2}


def tolerance(dtype) -> float:
  """The relative error a result in `dtype` is held to."""
  return TOL[jnp.dtype(dtype).type]


def random_qkv(seed, b, t, s, n, k, h, hv=None, dtype=jnp.float32):
  """Fresh normal q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv] and a cotangent [B, T, N, Hv]."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  hv = h if hv is None else hv
  q = jax.random.normal(ks[0], (b, t, n, h), jnp.float32).astype(dtype)
  kk = jax.random.normal(ks[1], (b, s, k, h), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (b, s, k, hv), jnp.float32).astype(dtype)
  ct = jax.random.normal(ks[3], (b, t, n, hv), jnp.float32).astype(dtype)
  return q, kk, v, ct


def rel_err(a, b) -> float:
  """max |a - b| / max(max |b|, 1) in float64: the one relative-error metric of tests and benchmarks."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size == 0:
    return 0.0
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1.0))


def reference_with_lse(q, k, v, *, mask=Mask(), segment_ids=None, kv_segment_ids=None, q_offset=0, scale=None):
  """Dense (out [B, T, N, Hv] in q's dtype, lse [B, N, T] float32, +inf for rows that see no key)."""
  visible = reference.dense_mask(mask, q.shape[1], k.shape[1], segment_ids=segment_ids,
                                 kv_segment_ids=kv_segment_ids, q_offset=q_offset)
  out, lse = reference.attention_with_lse(q, k, v, visible, default_scale(q.shape[-1], scale))
  return out.astype(q.dtype), lse


def out_lse_grads(fn, q, k, v, do, dlse=None):
  """Jitted (out, lse, (dq, dk, dv)) of fn(q, k, v) -> (out, lse), for the loss sum(out * do) +
  sum(lse * dlse) over the rows with a finite lse (dlse None: out's cotangent only)."""

  def run(q, k, v):
    (out, lse), vjp = jax.vjp(fn, q, k, v)
    dl = jnp.zeros_like(lse) if dlse is None else jnp.where(jnp.isfinite(lse), dlse, 0.0)
    return out, lse, vjp((do.astype(out.dtype), dl))

  return jax.jit(run)(q, k, v)


def fwd_and_grads(impl, q, k, v, ct, **kw):
  """Output and (dq, dk, dv) of sum(attend(...) * ct), in one jitted call (one compile per impl)."""
  @jax.jit
  def run(q, k, v, ct):
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, impl=impl, **kw), q, k, v)
    return out, vjp(ct)

  return run(q, k, v, ct)


def assert_matches_reference(impl, q, k, v, ct, tol=None, **kw):
  """attend(impl=...)'s forward and gradients equal the dense reference's within tol (rel_err)."""
  tol = tolerance(q.dtype) if tol is None else tol
  out, grads = fwd_and_grads(impl, q, k, v, ct, **kw)
  ref_out, ref_grads = fwd_and_grads("reference", q, k, v, ct, **kw)
  assert out.shape == ref_out.shape and out.dtype == q.dtype
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  assert rel_err(out, ref_out) < tol, ("out", rel_err(out, ref_out))
  for name, g, rg in zip("qkv", grads, ref_grads):
    assert g.shape == rg.shape
    assert rel_err(g, rg) < tol, (f"d{name}", rel_err(g, rg))


__all__ = ["TOL", "assert_matches_reference", "fwd_and_grads", "out_lse_grads", "random_qkv", "reference_with_lse",
           "rel_err", "tolerance"]
