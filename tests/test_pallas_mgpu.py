"""Hopper Mosaic GPU FlashAttention: the interpreter against the reference, and lowering for CUDA.

Interpret mode runs the kernels' warpgroups, TMA copies and barriers on the CPU (module doc of
attention/pallas_mgpu.py lists the three hardware-only operations it replaces by their arithmetic). It costs
about 10-20 s per kernel launch of one or two CTAs on this machine (measured: a T = S = 128 causal forward
with one head, 10.5 s wall, 3.4 s CPU), so it gets two cases that between them cover causal, window,
segment ids, GQA, T != S with padding, int and [B] q_offset and a head dim that needs padding. Every
configuration is also lowered for "cuda" (wgmma, TMA, layouts and run_state are lowered there, which the
interpreter replaces).
"""

import jax
import jax.numpy as jnp
import pytest

from attention import BlockSizes, Mask, attend
from attention import pallas_mgpu
from attention.testing import assert_matches_reference, random_qkv

# Small tiles so that the tiny inputs still walk several kv tiles through the two-slot ring.
_TILES = BlockSizes(64, 64)


def test_causal_gqa_odd_lengths_and_offset_match_reference():
  """Forward and gradients; T=96 is padded to the 128 rows of a CTA, S=160 to whole kv tiles, H=48 to 64."""
  q, k, v, ct = random_qkv(0, 1, 96, 160, 2, 1, 48, dtype=jnp.bfloat16)
  assert_matches_reference("pallas_mgpu", q, k, v, ct, mask=Mask(causal=True), q_offset=40, block_sizes=_TILES)


def test_window_segments_batch_offsets_match_reference():
  """Sliding window over packed documents with per-row offsets: segment ranges narrow the tile walk."""
  q, k, v, ct = random_qkv(1, 2, 128, 192, 1, 1, 64, dtype=jnp.float16)
  seg = jnp.array([[0] * 40 + [1] * 88, [2] * 128], jnp.int32)
  kv_seg = jnp.array([[0] * 100 + [1] * 92, [2] * 30 + [3] * 162], jnp.int32)
  assert_matches_reference("pallas_mgpu", q, k, v, ct, mask=Mask(causal=True, window=(48, 0)), segment_ids=seg,
                           kv_segment_ids=kv_seg, q_offset=jnp.array([50, 64], jnp.int32), block_sizes=_TILES)


def test_bad_arguments():
  q, k, v, _ = random_qkv(0, 1, 64, 64, 1, 1, 64)
  with pytest.raises(NotImplementedError, match="bfloat16 and float16"):
    attend(q, k, v, impl="pallas_mgpu", interpret=True)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  with pytest.raises(ValueError, match="block_q to be a power of two >= 64"):
    attend(q, k, v, impl="pallas_mgpu", interpret=True, block_sizes=BlockSizes(32, 64))
  big = pallas_mgpu.KernelConfig(128, 256, num_stages=4)
  with pytest.raises(ValueError, match="shared memory"):
    pallas_mgpu.flash_forward(q, k, v, configs=pallas_mgpu.Configs(big, big, big))
  with pytest.raises(NotImplementedError, match="head dims up to 256"):
    pallas_mgpu.padded_head_dim(320)


# Each mask with each head dim once; dtypes, GQA/MQA, T != S and offsets spread over the cases.
_LOWER_CASES = [
    dict(mask="causal", h=64, dtype="bfloat16", n=4, k=2, t=256, s=256),
    dict(mask="window", h=64, dtype="float16", n=2, k=1, t=128, s=320),
    dict(mask="segments", h=64, dtype="bfloat16", n=2, k=2, t=256, s=256, offsets=True),
    dict(mask="causal", h=128, dtype="float16", n=2, k=1, t=192, s=256),
    dict(mask="window", h=128, dtype="bfloat16", n=4, k=2, t=256, s=256, offsets=True),
    dict(mask="segments", h=128, dtype="float16", n=2, k=1, t=256, s=256),
    dict(mask="causal", h=256, dtype="bfloat16", n=2, k=2, t=256, s=256, offsets=True),
    dict(mask="window", h=256, dtype="float16", n=2, k=1, t=256, s=256),
    dict(mask="segments", h=256, dtype="bfloat16", n=4, k=2, t=128, s=256),
]

def _lower(case):
  """The text of jax.grad of sum(attend(...)^2) lowered for "cuda" from this CPU-only machine."""
  dt, b = jnp.dtype(case["dtype"]), 2
  q = jax.ShapeDtypeStruct((b, case["t"], case["n"], case["h"]), dt)
  kv = jax.ShapeDtypeStruct((b, case["s"], case["k"], case["h"]), dt)
  seg, kv_seg = jax.ShapeDtypeStruct((b, case["t"]), jnp.int32), jax.ShapeDtypeStruct((b, case["s"]), jnp.int32)
  off = jax.ShapeDtypeStruct((b,), jnp.int32) if case.get("offsets") else 0
  mask = {"causal": Mask(causal=True), "window": Mask(window=(96, 16)), "segments": Mask(causal=True)}[case["mask"]]

  def loss(q, k, v, seg, kv_seg, off):
    kw = dict(segment_ids=seg, kv_segment_ids=kv_seg) if case["mask"] == "segments" else {}
    out = attend(q, k, v, mask=mask, q_offset=off, impl="pallas_mgpu", interpret=False, **kw)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  traced = jax.jit(jax.grad(loss, (0, 1, 2))).trace(q, kv, kv, seg, kv_seg, off)
  return traced.lower(lowering_platforms=("cuda",)).as_text()


def test_lowers_for_cuda_every_configuration():
  """attend(impl="pallas_mgpu", interpret=False) and its gradients lower for "cuda" on a CPU-only machine.

  Each grad program holds three Mosaic GPU kernels: the forward (with its lse), dQ and dK/dV. No CUDA
  plugin is needed: with jax-cuda13-plugin 0.10.2 on the path the lowered text is byte-identical
  (measured); JAX's own attention_mgpu fails without it only because it asserts on cuda_versions.
  """
  for case in _LOWER_CASES:
    assert _lower(case).count("mosaic_gpu_v2") == 3, case
