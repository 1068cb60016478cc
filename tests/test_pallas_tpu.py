"""Pallas TPU kernels: interpret mode vs the dense reference (forward, dq/dk/dv, dlse) and TPU cross-lowering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies

from attention import Mask, attend, reference
from attention import pallas_tpu
from attention.mask import BlockSizes

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-2}
SMALL = BlockSizes(128, 128)  # several tiles per axis at interpret-mode sizes


def _inputs(seed, b, t, s, n, k, h, hv, dtype, segments):
  ks = jax.random.split(jax.random.PRNGKey(seed), 7)
  q = jax.random.normal(ks[0], (b, t, n, h), jnp.float32).astype(dtype)
  kk = jax.random.normal(ks[1], (b, s, k, h), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (b, s, k, hv), jnp.float32).astype(dtype)
  do = jax.random.normal(ks[3], (b, t, n, hv), jnp.float32)  # cotangent of out
  dlse = jax.random.normal(ks[4], (b, n, t), jnp.float32)  # cotangent of lse
  seg = kv_seg = None
  if segments:  # sorted ids: packed documents, some tiles see one document only
    seg = jnp.sort(jax.random.randint(ks[5], (b, t), 0, 3), axis=1)
    kv_seg = jnp.sort(jax.random.randint(ks[6], (b, s), 0, 3), axis=1)
  return q, kk, v, do, dlse, seg, kv_seg


def _out_lse_grads(fn, q, k, v, do, dlse):
  """(out, lse) of fn and the gradients of sum(out * do) + sum(lse * dlse) over rows that see a key."""

  def run(q, k, v):
    (out, lse), vjp = jax.vjp(fn, q, k, v)
    return out, lse, vjp((do.astype(out.dtype), jnp.where(jnp.isfinite(lse), dlse, 0.0)))

  return jax.jit(run)(q, k, v)


def _reference_with_lse(mask, seg, kv_seg, q_offset, scale):
  def fn(q, k, v):
    visible = reference.dense_mask(mask, q.shape[1], k.shape[1], segment_ids=seg, kv_segment_ids=kv_seg,
                                   q_offset=q_offset)
    out, lse = reference.attention_with_lse(q, k, v, visible, scale)
    return out.astype(q.dtype), lse

  return fn


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1.0))


def _check(t, s, n, k, h, mask, *, hv=None, dtype=jnp.float32, segments=False, q_offset=0, b=1,
           block_sizes=SMALL, seed=0):
  """Forward, lse and dq/dk/dv (with an lse cotangent) of the kernels equal the dense reference."""
  q, kk, v, do, dlse, seg, kv_seg = _inputs(seed, b, t, s, n, k, h, hv or h, dtype, segments)
  kw = dict(mask=mask, segment_ids=seg, kv_segment_ids=kv_seg, q_offset=q_offset)
  got = _out_lse_grads(lambda q, k, v: pallas_tpu.flash_attention_with_lse(
      q, k, v, block_sizes=block_sizes, interpret=True, **kw), q, kk, v, do, dlse)
  want = _out_lse_grads(_reference_with_lse(mask, seg, kv_seg, q_offset, h ** -0.5), q, kk, v, do, dlse)
  tol = TOL[dtype]
  out, lse, grads = got
  assert out.shape == (b, t, n, hv or h) and out.dtype == dtype and lse.shape == (b, n, t)
  np.testing.assert_array_equal(np.isinf(lse), np.isinf(want[1]))  # rows that see no key: +inf
  assert _rel_err(out, want[0]) < tol, ("out", _rel_err(out, want[0]))
  finite = np.isfinite(want[1])
  assert _rel_err(np.where(finite, lse, 0), np.where(finite, want[1], 0)) < tol
  for name, g, w in zip(("dq", "dk", "dv"), grads, want[2]):
    assert g.dtype == dtype and np.all(np.isfinite(np.asarray(g, np.float32))), name
    assert _rel_err(g, w) < tol, (name, _rel_err(g, w))
  return out, lse


def test_causal_gqa():
  _check(256, 256, 4, 2, 128, Mask(causal=True))


def test_window_segments_mqa_ragged_lengths():
  # T != S, neither a tile multiple; v with its own head dim; H=64 as a full-dim tile.
  _check(200, 333, 2, 1, 64, Mask(window=(50, 20)), hv=128, segments=True)


def test_traced_q_offset_per_row():
  # Offsets that differ per batch row (decoding; negative as in ring attention), T != S.
  _check(256, 384, 4, 2, 128, Mask(causal=True), b=2, q_offset=jnp.array([100, -70], jnp.int32))


def test_negative_offset_padded_head_dim_fully_masked_rows():
  # Ring attention: q_offset < 0 leaves the first 130 rows with no visible key -> zeros, lse +inf.
  out, lse = _check(256, 256, 2, 2, 96, Mask(causal=True), q_offset=-130)
  assert np.all(np.asarray(out)[:, :130] == 0) and np.all(np.isinf(np.asarray(lse)[:, :, :130]))


def test_segments_without_matching_keys_return_zeros():
  q, k, v, _, _, _, _ = _inputs(1, 1, 128, 256, 2, 1, 128, 128, jnp.float32, False)
  seg = jnp.concatenate([jnp.zeros((1, 64), jnp.int32), jnp.full((1, 64), 5, jnp.int32)], axis=1)
  kv_seg = jnp.zeros((1, 256), jnp.int32)  # no key has id 5
  out, lse = pallas_tpu.flash_forward(q, k, v, segment_ids=seg, kv_segment_ids=kv_seg, block_sizes=SMALL,
                                      interpret=True)
  assert np.all(np.asarray(out)[:, 64:] == 0) and np.all(np.isinf(np.asarray(lse)[:, :, 64:]))
  assert np.all(np.isfinite(np.asarray(lse)[:, :, :64]))


def test_bf16_sliding_window():
  _check(256, 256, 2, 1, 128, Mask(causal=True, window=(64, 0)), dtype=jnp.bfloat16)


def test_fp16_runs_as_f32():
  _check(130, 256, 2, 1, 128, Mask(causal=True), dtype=jnp.float16)


def test_odd_long_lengths_default_blocks():
  # 1000 x 1537 with the default 512 tiles: partial last tiles on both axes, segments, bidirectional.
  _check(1000, 1537, 2, 1, 128, Mask(), segments=True, block_sizes=None)


def test_attend_registry_interprets_on_cpu():
  q, k, v, _, _, _, _ = _inputs(2, 1, 128, 128, 2, 1, 128, 128, jnp.float32, False)
  out = attend(q, k, v, mask=Mask(causal=True), impl="pallas_tpu")  # interpret resolved from the backend
  want = reference.attention(q, k, v, mask=Mask(causal=True))
  assert _rel_err(out, want) < 1e-5


def test_block_map_bounds_the_grid():
  # A 128-wide causal window over 16 tiles visits 2 kv tiles per q tile: the grid has 2 kv steps, not 16.
  q = jnp.ones((1, 2048, 1, 128), jnp.float32)
  cfg = pallas_tpu._config(q, q, q, mask=Mask(causal=True, window=(127, 0)), segment_ids=None, scale=None,
                           block_sizes=SMALL, interpret=True)
  ops = pallas_tpu._operands(cfg, q, q, q, None, None, 0)
  assert (ops.kv_steps, ops.q_steps) == (2, 2)


def test_rejects_block_sizes_off_tpu_tiling():
  q = jnp.ones((1, 128, 1, 128), jnp.float32)
  with pytest.raises(ValueError, match="block_sizes"):
    pallas_tpu.flash_forward(q, q, q, block_sizes=BlockSizes(64, 128), interpret=True)


LOWERING_CASES = {
    "causal_bf16_gqa": dict(t=1024, s=1024, n=4, k=2, h=128, dtype=jnp.bfloat16, mask=Mask(causal=True)),
    "window_segments_f32": dict(t=1000, s=1537, n=2, k=1, h=64, hv=128, dtype=jnp.float32,
                                mask=Mask(causal=True, window=(256, 0)), segments=True),
    "window_segments_bf16": dict(t=1000, s=1537, n=4, k=2, h=128, dtype=jnp.bfloat16,
                                 mask=Mask(causal=True, window=(256, 0)), segments=True),
    "h256_bidirectional": dict(t=512, s=768, n=2, k=2, h=256, dtype=jnp.bfloat16, mask=Mask()),
    "decode_traced_offset": dict(t=1, s=2048, n=8, k=1, h=128, dtype=jnp.bfloat16, mask=Mask(causal=True),
                                 q_offset=jnp.array([2047, 100], jnp.int32), b=2),
    "fp16_padded_head": dict(t=384, s=384, n=2, k=1, h=96, dtype=jnp.float16, mask=Mask(window=(64, 64))),
}


def _loss_and_args(name):
  """A scalar function of (q, k, v[, segment ids]) through both kernel outputs, and its argument shapes."""
  c = dict(LOWERING_CASES[name])
  b, t, s, n, k, h = (c.pop(x, 1) for x in ("b", "t", "s", "n", "k", "h"))
  hv, dtype, segments = c.pop("hv", h), c.pop("dtype"), c.pop("segments", False)
  q_offset = c.pop("q_offset", 0)
  sds = jax.ShapeDtypeStruct
  args = [sds((b, t, n, h), dtype), sds((b, s, k, h), dtype), sds((b, s, k, hv), dtype)]
  if segments:
    args += [sds((b, t), jnp.int32), sds((b, s), jnp.int32)]

  def loss(q, k, v, *seg):
    out, lse = pallas_tpu.flash_attention_with_lse(
        q, k, v, segment_ids=seg[0] if seg else None, kv_segment_ids=seg[1] if seg else None,
        q_offset=q_offset, interpret=False, **c)
    return out.astype(jnp.float32).sum() + jnp.where(jnp.isfinite(lse), lse, 0.0).sum()

  return loss, args


@pytest.mark.parametrize("name", sorted(LOWERING_CASES))
def test_lowers_for_tpu(name):
  """interpret=False cross-lowers the forward, dQ and dK/dV kernels to Mosaic TPU custom calls."""
  loss, args = _loss_and_args(name)
  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower(lowering_platforms=("tpu",))
  assert lowered.as_text().count("tpu_custom_call") == 3, "expected the forward, dQ and dK/dV kernels"


@pytest.mark.parametrize("name", ["causal_bf16_gqa", "window_segments_bf16", "decode_traced_offset"])
def test_compiles_for_tpu_with_libtpu(name):
  """Full Mosaic compilation for a v5e chip without a TPU (VMEM budget, vector layouts): needs libtpu.

  Lowering alone does not run Mosaic's layout passes; an AOT compile for a TPU topology does.
  """
  pytest.importorskip("libtpu", reason="libtpu (jax[tpu]) not installed: only cross-lowering is checked")
  device = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  loss, args = _loss_and_args(name)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower().compile()
  assert compiled.memory_analysis() is not None
