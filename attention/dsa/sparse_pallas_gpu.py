"""Sparse attention over selected keys as Pallas GPU kernels (Triton lowering), forward and backward.

DeepSeek Sparse Attention (DeepSeek-V3.2-Exp report, sec. 2.1) attends each query to its own top_k keys.
As in FlashMLA's sparse kernels, one program owns one query token and one kv head: the G query heads of
the GQA group are the rows of the q tile (they share the selected keys; groups wider than block_g rows are
split over several programs), and the program walks its index list bk slots at a time, gathering the
selected K/V rows ([bk, H]) with a pointer-array load and running an online softmax over them. Slots
holding -1 are masked; a query with no valid slot returns zeros.

The backward kernel has the same shape: it recomputes p = exp(s - lse) per gathered tile, accumulates dQ
in registers and scatters dK, dV into float32 accumulators with atomic adds (distinct queries select the
same keys, so the rows they write collide). Slots holding -1 write a spare row S that is dropped, so no
masked atomics are needed. Logits are kept in base 2 so the softmax uses exp2.

Triton needs power-of-two tiles of at least 16 for its dot: G, H and Hv are zero-padded (padded heads read
zero q and dO rows, so they add nothing to dK/dV) and the index list is padded with -1.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from attention.kernel_utils import pad_axis

_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)


def _pow2_at_least(n: int, floor: int = 16) -> int:
  return max(floor, 1 << (max(1, n) - 1).bit_length())


def _dot(a, b, *, trans_a=False, trans_b=False):
  """2-D matmul with float32 accumulation."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _gather(ref, ids, width):
  """Rows ids [bk] of a 2-D ref -> [bk, width]: one pointer-array load (Triton) / gather (interpret)."""
  return ref[ids[:, None], jnp.arange(width, dtype=jnp.int32)[None, :]]


def _tile_ids(idx_ref, j, bk):
  """Slot tile j: valid [bk] bool and safe [bk] row ids (-1 -> row 0 for loads)."""
  ids = idx_ref[pl.ds(pl.multiple_of(j * bk, bk), bk)]  # [bk]
  valid = ids >= 0
  return valid, jnp.where(valid, ids, 0)


def _fwd_kernel(q_ref, k_ref, v_ref, idx_ref, o_ref, lse_ref, *, scale2, bk, num_tiles):
  """One query token, one kv head: out [G, Hv] and base-2 lse [G] (+inf when no slot is valid)."""
  q = q_ref[...]  # [G, H]
  hp, hvp = q.shape[-1], o_ref.shape[-1]

  def body(j, carry):
    m, l, acc = carry  # [G], [G], [G, Hv]
    valid, safe = _tile_ids(idx_ref, j, bk)
    kt = _gather(k_ref, safe, hp)  # [bk, H]
    s = jnp.where(valid[None, :], _dot(q, kt, trans_b=True) * scale2, -jnp.inf)  # [G, bk]
    m_new = jnp.maximum(m, s.max(axis=1))
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # nothing valid yet: avoid inf - inf
    p = jnp.exp2(s - m_use[:, None])
    corr = jnp.exp2(m - m_use)
    vt = _gather(v_ref, safe, hvp)  # [bk, Hv]
    return m_new, l * corr + p.sum(axis=1), acc * corr[:, None] + _dot(p.astype(vt.dtype), vt)

  g = q.shape[0]
  init = (jnp.full((g,), -jnp.inf, jnp.float32), jnp.zeros((g,), jnp.float32), jnp.zeros((g, hvp), jnp.float32))
  m, l, acc = lax.fori_loop(0, num_tiles, body, init)
  seen = l > 0
  o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log2(jnp.where(seen, l, 1.0)), jnp.inf)


def _bwd_kernel(q_ref, k_ref, v_ref, idx_ref, do_ref, lse_ref, delta_ref, dk_in_ref, dv_in_ref,
                dq_ref, dk_ref, dv_ref, *, scale, scale2, bk, num_tiles, spare_row):
  """One query token, one kv head: dQ [G, H] in registers; dK, dV rows [bk, H] atomically added."""
  del dk_in_ref, dv_in_ref  # aliased with dk_ref, dv_ref (zero-initialised accumulators)
  q, do = q_ref[...], do_ref[...]  # [G, H], [G, Hv]
  lse2, delta = lse_ref[...], delta_ref[...]  # [G], [G]
  hp, hvp = q.shape[-1], do.shape[-1]
  cols_k = jnp.arange(hp, dtype=jnp.int32)[None, :]
  cols_v = jnp.arange(hvp, dtype=jnp.int32)[None, :]

  def body(j, dq):
    valid, safe = _tile_ids(idx_ref, j, bk)
    kt, vt = _gather(k_ref, safe, hp), _gather(v_ref, safe, hvp)  # [bk, H], [bk, Hv]
    s = jnp.where(valid[None, :], _dot(q, kt, trans_b=True) * scale2, -jnp.inf)  # [G, bk]
    p = jnp.exp2(s - lse2[:, None])  # 0 at invalid slots and for rows that saw nothing (lse = +inf)
    dp = _dot(do, vt, trans_b=True)  # [G, bk]
    ds = p * (dp - delta[:, None]) * scale
    rows = jnp.where(valid, safe, spare_row)[:, None]  # [bk, 1]; -1 slots write the spare row
    plgpu.atomic_add(dv_ref, (rows, cols_v), _dot(p.astype(do.dtype), do, trans_a=True))  # [bk, Hv]
    plgpu.atomic_add(dk_ref, (rows, cols_k), _dot(ds.astype(q.dtype), q, trans_a=True))  # [bk, H]
    return dq + _dot(ds.astype(kt.dtype), kt)

  dq = lax.fori_loop(0, num_tiles, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _layout(q, k, v, indices, block_k):
  """Padded operands: q [B, T, K, Gp, Hp], k [B, S, K, Hp], v [B, S, K, Hvp], indices [B, T, kp].

  block_k None: 64 slots per tile for head dims up to 128, fewer for wider heads (registers hold a
  gathered [bk, H] tile of K and of V).
  """
  b, t, n, h = q.shape
  kvh, hv, top_k = k.shape[2], v.shape[-1], indices.shape[-1]
  g = n // kvh
  gp, hp, hvp = _pow2_at_least(g), _pow2_at_least(h), _pow2_at_least(hv)
  if block_k is None:
    block_k = 64 if max(hp, hvp) <= 128 else 32 if max(hp, hvp) <= 256 else 16
  bk = min(block_k, _pow2_at_least(top_k))
  kp = -(-top_k // bk) * bk
  q5 = pad_axis(pad_axis(q.reshape(b, t, kvh, g, h), 3, gp), 4, hp)
  return q5, pad_axis(k, 3, hp), pad_axis(v, 3, hvp), pad_axis(indices, 2, kp, -1), bk


def _params(num_warps):
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=2)


def _specs(s_rows, bg, ng, kp):
  """BlockSpecs over the grid (t, b, kv head x head block): a [bg, D] tile of one token's query heads, the
  whole K/V of their kv head, the token's index list. Head block r of kv head h is grid index h * ng + r."""
  kv, blk = (lambda h: lax.div(h, ng)), (lambda h: lax.rem(h, ng))
  tok = lambda d: pl.BlockSpec((None, None, None, bg, d), lambda t, b, h: (b, t, kv(h), blk(h), 0))
  rows = lambda d: pl.BlockSpec((None, s_rows, None, d), lambda t, b, h: (b, 0, kv(h), 0))
  idx = pl.BlockSpec((None, None, kp), lambda t, b, h: (b, t, 0))
  vec = pl.BlockSpec((None, None, None, bg), lambda t, b, h: (b, t, kv(h), blk(h)))
  return tok, rows, idx, vec


def _forward(q5, k, v, idx, *, scale, bk, bg, interpret, num_warps):
  b, t, kvh, gp, hp = q5.shape
  s_len, hvp, kp = k.shape[1], v.shape[-1], idx.shape[-1]
  tok, rows, idx_spec, vec = _specs(s_len, bg, gp // bg, kp)
  kernel = functools.partial(_fwd_kernel, scale2=scale * _LOG2E, bk=bk, num_tiles=kp // bk)
  return pl.pallas_call(
      kernel,
      grid=(t, b, kvh * (gp // bg)),
      in_specs=[tok(hp), rows(hp), rows(hvp), idx_spec],
      out_specs=[tok(hvp), vec],
      out_shape=[jax.ShapeDtypeStruct((b, t, kvh, gp, hvp), q5.dtype),
                 jax.ShapeDtypeStruct((b, t, kvh, gp), jnp.float32)],
      compiler_params=_params(num_warps),
      interpret=interpret,
      name="dsa_sparse_fwd",
  )(q5, k, v, idx)


def _backward(q5, k, v, idx, do5, lse2, delta, *, scale, bk, bg, interpret, num_warps):
  b, t, kvh, gp, hp = q5.shape
  s_len, hvp, kp = k.shape[1], v.shape[-1], idx.shape[-1]
  ng = gp // bg
  tok, rows, idx_spec, vec = _specs(s_len, bg, ng, kp)
  acc_rows = lambda d: pl.BlockSpec((None, s_len + 1, None, d), lambda t, b, h: (b, 0, lax.div(h, ng), 0))
  kernel = functools.partial(_bwd_kernel, scale=scale, scale2=scale * _LOG2E, bk=bk, num_tiles=kp // bk,
                             spare_row=s_len)
  dk0 = jnp.zeros((b, s_len + 1, kvh, hp), jnp.float32)  # one spare row for the -1 slots
  dv0 = jnp.zeros((b, s_len + 1, kvh, hvp), jnp.float32)
  dq, dk, dv = pl.pallas_call(
      kernel,
      grid=(t, b, kvh * ng),
      in_specs=[tok(hp), rows(hp), rows(hvp), idx_spec, tok(hvp), vec, vec, acc_rows(hp), acc_rows(hvp)],
      out_specs=[tok(hp), acc_rows(hp), acc_rows(hvp)],
      out_shape=[jax.ShapeDtypeStruct(q5.shape, q5.dtype), jax.ShapeDtypeStruct(dk0.shape, jnp.float32),
                 jax.ShapeDtypeStruct(dv0.shape, jnp.float32)],
      input_output_aliases={7: 1, 8: 2},
      compiler_params=_params(num_warps),
      interpret=interpret,
      name="dsa_sparse_bwd",
  )(q5, k, v, idx, do5, lse2, delta, dk0, dv0)
  return dq, dk[:, :s_len], dv[:, :s_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _sparse(q, k, v, indices, scale, block_k, block_g, interpret, num_warps):
  return _sparse_fwd(q, k, v, indices, scale, block_k, block_g, interpret, num_warps)[0]


def _sparse_fwd(q, k, v, indices, scale, block_k, block_g, interpret, num_warps):
  b, t, n, _ = q.shape
  hv = v.shape[-1]
  q5, kp, vp, idx, bk = _layout(q, k, v, indices, block_k)
  bg = min(block_g, q5.shape[3])
  out5, lse2 = _forward(q5, kp, vp, idx, scale=scale, bk=bk, bg=bg, interpret=interpret, num_warps=num_warps)
  g = n // k.shape[2]
  out = out5[:, :, :, :g, :hv].reshape(b, t, n, hv)
  return out, (q, k, v, indices, out, lse2)


def _sparse_bwd(scale, block_k, block_g, interpret, num_warps, res, do):
  q, k, v, indices, out, lse2 = res
  b, t, n, h = q.shape
  kvh, hv = k.shape[2], v.shape[-1]
  g = n // kvh
  q5, kp, vp, idx, bk = _layout(q, k, v, indices, block_k)
  gp, hvp = q5.shape[3], vp.shape[-1]
  do5 = pad_axis(pad_axis(do.reshape(b, t, kvh, g, hv), 3, gp), 4, hvp)
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), -1)  # rowsum(dO * O) [B, T, N]
  delta = pad_axis(delta.reshape(b, t, kvh, g), 3, gp)
  dq5, dk, dv = _backward(q5, kp, vp, idx, do5, lse2, delta, scale=scale, bk=bk, bg=min(block_g, gp),
                          interpret=interpret, num_warps=num_warps)
  dq = dq5[:, :, :, :g, :h].reshape(b, t, n, h)
  return dq, dk[..., :h].astype(k.dtype), dv[..., :hv].astype(v.dtype), None


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


def sparse_pallas_gpu(q, k, v, indices, *, scale, interpret, block_k: int | None = None, block_g: int = 64,
                      num_warps: int = 4):
  """Registry entry: q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv], indices [B, T, k] -> [B, T, N, Hv].

  block_k: index slots per gathered tile (power of two >= 16; default by head dim). block_g: query heads
  per program (power of two >= 16); a group with more heads is split over programs that gather the same
  rows, as FlashMLA splits its 128 heads over 64-row warpgroups.
  """
  return _sparse(q, k, v, indices, float(scale), block_k, block_g, bool(interpret), num_warps)
