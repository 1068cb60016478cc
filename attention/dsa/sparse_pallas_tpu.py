"""Sparse attention over selected keys as Pallas TPU kernels (Mosaic), forward and backward.

DeepSeek Sparse Attention (DeepSeek-V3.2-Exp report, sec. 2.1). One grid step owns one query token and
one kv head; the G query heads of the GQA group are the rows of its q tile. The index list is scalar-
prefetched into SMEM, and the step issues one row DMA per selected key from K/V in HBM into a [kp, H]
VMEM buffer (all copies in flight at once, then waited on), so only the selected rows ever leave HBM.
The softmax over the kp slots is then a single [G, kp] tile; slots holding -1 are masked.

TPUs have no atomics, so the backward pass scatters dK and dV by read-modify-write: the step gathers the
current accumulator rows of its selected keys, adds its contribution and writes them back, all with row
DMAs, and waits for the writes before the next step starts. The grid therefore runs sequentially
("arbitrary"); slots holding -1 read and write a spare row S with a zero contribution.

Lane dims are padded to 128 and the rows to 8; the SMEM index list bounds B*T*kp (int32) by the SMEM size,
so longer inputs are split into query chunks of at most MAX_PREFETCH / kp queries, one call each.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from attention.kernel_utils import pad_axis

NUM_LANES = 128
MAX_PREFETCH = 1 << 16  # int32 index entries per call kept in SMEM (256 KiB)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _interpret_arg(interpret: bool):
  """pallas_call's interpret argument: the TPU interpreter (simulates DMAs and SMEM) where available."""
  if not interpret:
    return False
  return pltpu.InterpretParams() if hasattr(pltpu, "InterpretParams") else True


def _safe_row(idx_ref, pos, fill):
  """The key selected at flat slot `pos` of the SMEM index list, or `fill` where the slot holds -1."""
  r = idx_ref[pos]
  return jnp.where(r >= 0, r, fill)


def _row_copies(idx_ref, base, src, dst, sem, *, fill=0, to_rows=False):
  """Slot j -> a DMA descriptor moving one row between src and dst: src[row(j)] -> dst[j] (a gather), or
  with to_rows=True src[j] -> dst[row(j)] (a scatter), where row(j) is the selected key or `fill`."""

  def copy(j):
    row = pl.ds(_safe_row(idx_ref, base + j, fill), 1)
    if to_rows:
      return pltpu.make_async_copy(src.at[pl.ds(j, 1)], dst.at[row], sem)
    return pltpu.make_async_copy(src.at[row], dst.at[pl.ds(j, 1)], sem)

  return copy


def _for_each_slot(kp, fn):
  lax.fori_loop(0, kp, lambda j, c: (fn(j), c)[1], 0)


def _all_rows(copies, kp):
  """Start every row copy of every descriptor, then wait for all (each wait consumes one row's worth)."""
  for copy in copies:
    _for_each_slot(kp, lambda j, copy=copy: copy(j).start())
  for copy in copies:
    _for_each_slot(kp, lambda j, copy=copy: copy(j).wait())


def _scores(q, kbuf, valid, scale):
  """q [G, H], kbuf [kp, H] -> float32 [G, kp] scaled logits, -inf at slots holding -1."""
  s = lax.dot_general(q, kbuf, _NT, preferred_element_type=jnp.float32) * scale
  return jnp.where(valid, s, -jnp.inf)


def _fwd_kernel(idx_ref, q_ref, ivec_ref, k_hbm, v_hbm, o_ref, lse_ref, kbuf, vbuf, sem, *, scale, t_len, kp):
  """One query token, one kv head: gather its kp K/V rows, out [G, Hv] and lse [G, 1] (+inf: no key)."""
  b, t, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  base = (b * t_len + t) * kp
  _all_rows([_row_copies(idx_ref, base, k_hbm.at[b, h], kbuf, sem.at[0]),
             _row_copies(idx_ref, base, v_hbm.at[b, h], vbuf, sem.at[1])], kp)
  s = _scores(q_ref[...], kbuf[...], ivec_ref[...] >= 0, scale)  # [G, kp]
  m = s.max(axis=1, keepdims=True)  # [G, 1]
  m_safe = jnp.where(m == -jnp.inf, 0.0, m)
  p = jnp.exp(s - m_safe)
  l = p.sum(axis=1, keepdims=True)
  out = jnp.dot(p.astype(vbuf.dtype), vbuf[...], preferred_element_type=jnp.float32)  # [G, Hv]
  o_ref[...] = (out / jnp.where(l > 0, l, 1.0)).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(l > 0, m_safe + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)


def _bwd_kernel(idx_ref, q_ref, ivec_ref, do_ref, lse_ref, delta_ref, k_hbm, v_hbm, dk_in, dv_in,
                dq_ref, dk_hbm, dv_hbm, kbuf, vbuf, dkbuf, dvbuf, sem, *, scale, t_len, kp, spare_row):
  """One query token, one kv head: dQ [G, H]; dK, dV rows of its kp keys by read-modify-write DMAs."""
  del dk_in, dv_in  # aliased with dk_hbm, dv_hbm
  b, t, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  base = (b * t_len + t) * kp
  copies = functools.partial(_row_copies, idx_ref, base)
  dk_rows, dv_rows = dk_hbm.at[b, h], dv_hbm.at[b, h]
  _all_rows([copies(k_hbm.at[b, h], kbuf, sem.at[0]), copies(v_hbm.at[b, h], vbuf, sem.at[1]),
             copies(dk_rows, dkbuf, sem.at[2], fill=spare_row), copies(dv_rows, dvbuf, sem.at[3], fill=spare_row)],
            kp)
  q, do = q_ref[...], do_ref[...]  # [G, H], [G, Hv]
  s = _scores(q, kbuf[...], ivec_ref[...] >= 0, scale)  # [G, kp]
  p = jnp.exp(s - lse_ref[...])  # 0 at -1 slots and for rows that saw nothing (lse = +inf)
  dp = lax.dot_general(do, vbuf[...], _NT, preferred_element_type=jnp.float32)  # [G, kp]
  ds = p * (dp - delta_ref[...]) * scale
  dq_ref[...] = jnp.dot(ds.astype(kbuf.dtype), kbuf[...], preferred_element_type=jnp.float32).astype(dq_ref.dtype)
  dkbuf[...] += lax.dot_general(ds.astype(q.dtype), q, _TN, preferred_element_type=jnp.float32)  # [kp, H]
  dvbuf[...] += lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)  # [kp, Hv]
  # Write back; rows are distinct within a step (the spare row only ever receives its own old value).
  _all_rows([copies(dkbuf, dk_rows, sem.at[2], fill=spare_row, to_rows=True),
             copies(dvbuf, dv_rows, sem.at[3], fill=spare_row, to_rows=True)], kp)


def _layout(q, k, v, indices):
  """q [B, T, K, Gp, Hp], k [B, K, S, Hp], v [B, K, S, Hvp], indices [B, T, kp] (-1 padded)."""
  b, t, n, h = q.shape
  kvh, hv = k.shape[2], v.shape[-1]
  g = n // kvh
  gp, hp, hvp = _round_up(g, 8), _round_up(h, NUM_LANES), _round_up(hv, NUM_LANES)
  kp = _round_up(indices.shape[-1], NUM_LANES)
  q5 = pad_axis(pad_axis(q.reshape(b, t, kvh, g, h), 3, gp), 4, hp)
  kh = pad_axis(k, 3, hp).transpose(0, 2, 1, 3)  # head-major, so a selected row is one contiguous DMA
  vh = pad_axis(v, 3, hvp).transpose(0, 2, 1, 3)
  return q5, kh, vh, pad_axis(indices, 2, kp, -1)


def _specs(gp, kp):
  tok = lambda d: pl.BlockSpec((None, None, None, gp, d), lambda b, t, h, *_: (b, t, h, 0, 0))
  ivec = pl.BlockSpec((None, None, 1, kp), lambda b, t, h, *_: (b, t, 0, 0))
  any_ = pl.BlockSpec(memory_space=pl.ANY)
  return tok, ivec, any_


def _call(kernel, idx, grid, in_specs, out_specs, out_shape, scratch, interpret, name, aliases=None):
  grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=grid, in_specs=in_specs,
                                           out_specs=out_specs, scratch_shapes=scratch)
  # The backward's read-modify-write of shared dK/dV rows needs the steps in order, so both run in order.
  params = pltpu.CompilerParams(dimension_semantics=("arbitrary",) * 3)
  return functools.partial(pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=out_shape,
                                          compiler_params=params, interpret=_interpret_arg(interpret),
                                          input_output_aliases=aliases or {}, name=name), idx.reshape(-1))


def _forward(q5, kh, vh, idx, *, scale, interpret):
  b, t, kvh, gp, hp = q5.shape
  hvp, kp = vh.shape[-1], idx.shape[-1]
  tok, ivec, any_ = _specs(gp, kp)
  kernel = functools.partial(_fwd_kernel, scale=scale, t_len=t, kp=kp)
  out, lse = _call(kernel, idx, (b, t, kvh), [tok(hp), ivec, any_, any_], [tok(hvp), tok(1)],
                   [jax.ShapeDtypeStruct((b, t, kvh, gp, hvp), q5.dtype),
                    jax.ShapeDtypeStruct((b, t, kvh, gp, 1), jnp.float32)],
                   [pltpu.VMEM((kp, hp), kh.dtype), pltpu.VMEM((kp, hvp), vh.dtype),
                    pltpu.SemaphoreType.DMA((2,))],
                   interpret, "dsa_sparse_fwd_tpu")(q5, idx[:, :, None, :], kh, vh)
  return out, lse


def _backward(q5, kh, vh, idx, do5, lse, delta, *, scale, interpret):
  b, t, kvh, gp, hp = q5.shape
  s_len, hvp, kp = kh.shape[2], vh.shape[-1], idx.shape[-1]
  tok, ivec, any_ = _specs(gp, kp)
  dk0 = jnp.zeros((b, kvh, s_len + 1, hp), jnp.float32)  # one spare row for the -1 slots
  dv0 = jnp.zeros((b, kvh, s_len + 1, hvp), jnp.float32)
  kernel = functools.partial(_bwd_kernel, scale=scale, t_len=t, kp=kp, spare_row=s_len)
  # Operand numbering counts the prefetched index list: dk0, dv0 are operands 8 and 9.
  dq, dk, dv = _call(kernel, idx, (b, t, kvh), [tok(hp), ivec, tok(hvp), tok(1), tok(1), any_, any_, any_, any_],
                     [tok(hp), any_, any_],
                     [jax.ShapeDtypeStruct(q5.shape, q5.dtype), jax.ShapeDtypeStruct(dk0.shape, jnp.float32),
                      jax.ShapeDtypeStruct(dv0.shape, jnp.float32)],
                     [pltpu.VMEM((kp, hp), kh.dtype), pltpu.VMEM((kp, hvp), vh.dtype),
                      pltpu.VMEM((kp, hp), jnp.float32), pltpu.VMEM((kp, hvp), jnp.float32),
                      pltpu.SemaphoreType.DMA((4,))],
                     interpret, "dsa_sparse_bwd_tpu", aliases={8: 1, 9: 2})(
                         q5, idx[:, :, None, :], do5, lse, delta, kh, vh, dk0, dv0)
  return dq, dk[:, :, :s_len], dv[:, :, :s_len]


def _chunked(t, kp):
  """Query chunk per call so the SMEM index list stays within MAX_PREFETCH entries."""
  return max(1, min(t, MAX_PREFETCH // kp))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sparse(q, k, v, indices, scale, interpret):
  return _sparse_fwd(q, k, v, indices, scale, interpret)[0]


def _sparse_fwd(q, k, v, indices, scale, interpret):
  b, t, n, _ = q.shape
  kvh, hv = k.shape[2], v.shape[-1]
  g = n // kvh
  q5, kh, vh, idx = _layout(q, k, v, indices)
  c = _chunked(t, idx.shape[-1])
  outs = [_forward(q5[:, i:i + c], kh, vh, idx[:, i:i + c], scale=scale, interpret=interpret)
          for i in range(0, t, c)]
  out5 = jnp.concatenate([o for o, _ in outs], 1)
  lse = jnp.concatenate([l for _, l in outs], 1)
  out = out5[:, :, :, :g, :hv].reshape(b, t, n, hv)
  return out, (q, k, v, indices, out, lse)


def _sparse_bwd(scale, interpret, res, do):
  q, k, v, indices, out, lse = res
  b, t, n, h = q.shape
  kvh, hv = k.shape[2], v.shape[-1]
  g = n // kvh
  q5, kh, vh, idx = _layout(q, k, v, indices)
  gp, hvp = q5.shape[3], vh.shape[-1]
  do5 = pad_axis(pad_axis(do.reshape(b, t, kvh, g, hv), 3, gp), 4, hvp)
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), -1)  # rowsum(dO * O) [B, T, N]
  delta = pad_axis(delta.reshape(b, t, kvh, g), 3, gp)[..., None]  # [B, T, K, Gp, 1]
  c = _chunked(t, idx.shape[-1])
  dqs, dk, dv = [], 0.0, 0.0
  for i in range(0, t, c):
    part = lambda x: x[:, i:i + c]
    dq_c, dk_c, dv_c = _backward(part(q5), kh, vh, part(idx), part(do5), part(lse), part(delta), scale=scale,
                                 interpret=interpret)
    dqs.append(dq_c)
    dk, dv = dk + dk_c, dv + dv_c
  dq = jnp.concatenate(dqs, 1)[:, :, :, :g, :h].reshape(b, t, n, h)
  dk = dk.transpose(0, 2, 1, 3)[..., :h].astype(k.dtype)
  dv = dv.transpose(0, 2, 1, 3)[..., :hv].astype(v.dtype)
  return dq, dk, dv, None


_sparse.defvjp(_sparse_fwd, _sparse_bwd)


def sparse_pallas_tpu(q, k, v, indices, *, scale, interpret):
  """Registry entry: q [B, T, N, H], k [B, S, K, H], v [B, S, K, Hv], indices [B, T, k] -> [B, T, N, Hv]."""
  return _sparse(q, k, v, indices, float(scale), bool(interpret))
