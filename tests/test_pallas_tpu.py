"""Pallas TPU kernels: the grid the block map bounds, argument errors, TPU cross-lowering and compiling.

Interpret mode against the dense reference (every case): tests/test_attention_conformance.py.
"""

import jax
import jax.numpy as jnp
import pytest

from attention import Mask
from attention import pallas_tpu
from attention.mask import BlockSizes

SMALL = BlockSizes(128, 128)


def test_block_map_bounds_the_grid():
  # A 128-wide causal window over 16 tiles visits 2 kv tiles per q tile: the grid has 2 kv steps, not 16.
  q = jnp.ones((1, 2048, 1, 128), jnp.float32)
  pb = pallas_tpu._problem(q, q, q, mask=Mask(causal=True, window=(127, 0)), segment_ids=None, scale=0.125,
                          block_sizes=SMALL, interpret=True)
  ops = pallas_tpu._operands(pb, q, q, q, None, None, 0)
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


@pytest.mark.parametrize("topology,name", [("v5e:2x2", "causal_bf16_gqa"), ("v5e:2x2", "decode_traced_offset"),
                                           ("v6e:2x2", "window_segments_bf16")])
def test_compiles_for_tpu_with_libtpu(tpu_device, topology, name):
  """Full Mosaic compilation of the forward, dK/dV and dQ kernels for a TPU chip, without a TPU.

  Lowering alone does not run Mosaic's layout passes and VMEM checks; an AOT compile for a topology does.
  """
  sharding = jax.sharding.SingleDeviceSharding(tpu_device(topology))
  loss, args = _loss_and_args(name)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower().compile()
  assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == 3, "forward, dQ and dK/dV"
