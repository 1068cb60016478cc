"""Shared helpers for attention tests: fresh random inputs and forward + gradient comparison."""

import jax
import jax.numpy as jnp
import numpy as np

from attention import attend

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-2}


def random_qkv(seed, b, t, s, n, k, h, hv=None, dtype=jnp.float32):
  """Fresh normal q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv] and a cotangent [B,T,N,Hv]."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  hv = h if hv is None else hv
  q = jax.random.normal(ks[0], (b, t, n, h), jnp.float32).astype(dtype)
  kk = jax.random.normal(ks[1], (b, s, k, h), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (b, s, k, hv), jnp.float32).astype(dtype)
  ct = jax.random.normal(ks[3], (b, t, n, hv), jnp.float32).astype(dtype)
  return q, kk, v, ct


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  # Floor 1: inputs are unit-normal, so an exactly-zero gradient (e.g. window (0, 0)) is compared absolutely.
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1.0))


def fwd_and_grads(impl, q, k, v, ct, **kw):
  """Output and (dq, dk, dv) of sum(attend(...) * ct), in one jitted call (one compile per impl)."""

  @jax.jit
  def run(q, k, v, ct):
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, impl=impl, **kw), q, k, v)
    return out, vjp(ct)

  return run(q, k, v, ct)


def assert_matches_reference(impl, q, k, v, ct, tol=None, **kw):
  """impl's forward and gradients equal the dense reference's within tol (relative to the max)."""
  tol = TOL[q.dtype.type] if tol is None else tol
  out, grads = fwd_and_grads(impl, q, k, v, ct, **kw)
  ref_out, ref_grads = fwd_and_grads("reference", q, k, v, ct, **kw)
  assert out.shape == ref_out.shape and out.dtype == q.dtype
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  assert rel_err(out, ref_out) < tol, ("out", rel_err(out, ref_out))
  for name, g, rg in zip("qkv", grads, ref_grads):
    assert g.shape == rg.shape
    assert rel_err(g, rg) < tol, (f"d{name}", rel_err(g, rg))
