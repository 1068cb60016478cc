"""attend(): input validation (ValueError naming the argument) and impl selection."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

import attention
from attention import BlockSizes, Mask, attend
from attention.testing import random_qkv

Q, K, V, _ = random_qkv(0, 2, 16, 16, 4, 2, 8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=Q[0]), "q must have rank 4"),
    (dict(k=K[..., 0]), "k must have rank 4"),
    (dict(v=V[None]), "v must have rank 4"),
    (dict(q=Q.astype(jnp.int32)), "q must be float32"),
    (dict(k=K.astype(jnp.bfloat16)), "share a dtype"),
    (dict(k=K[:1]), "batch sizes differ"),
    (dict(v=V[:, :8]), "k and v must agree"),
    (dict(k=K[..., :4]), "k head dim 4 must equal q head dim 8"),
    (dict(q=Q[:, :, :3], k=K, v=V), "N=3 must be a multiple of kv heads K=2"),
    (dict(mask=(True, None)), "mask must be an attention.Mask"),
    (dict(segment_ids=jnp.zeros((2, 15), jnp.int32)), "segment_ids must be an int array of shape"),
    (dict(segment_ids=jnp.zeros((2, 16))), "segment_ids must be an int array"),
    (dict(kv_segment_ids=jnp.zeros((2, 16), jnp.int32)), "kv_segment_ids given without segment_ids"),
    (dict(q=Q[:, :4], segment_ids=jnp.zeros((2, 4), jnp.int32)), "kv_segment_ids is required when T=4 != S=16"),
    (dict(q_offset=-1), "q_offset must be >= 0"),
    (dict(q_offset=1.5), "q_offset must be an int"),
    (dict(q_offset=jnp.zeros((3,), jnp.int32)), "q_offset must be an int"),
    (dict(impl="flash3"), "impl='flash3' is not registered"),
    (dict(impl=None), "impl must be a string"),
    (dict(interpret="yes"), "interpret must be None or a bool"),
    (dict(scale="big"), "scale must be a Python number"),
    (dict(block_sizes=(64, 64)), "block_sizes must be an attention.BlockSizes"),
])
def test_bad_input_raises_value_error_naming_argument(kwargs, match):
  args = dict(q=Q, k=K, v=V)
  args.update(kwargs)
  q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
  with pytest.raises(ValueError, match=match):
    attend(q, k, v, **args)


def test_cudnn_needs_a_gpu():
  with pytest.raises(ValueError, match="impl='cudnn' runs on"):
    attend(Q, K, V, impl="cudnn")


def test_auto_picks_xla_on_cpu_and_logs_once(caplog):
  attention.registry._AUTO_LOGGED.clear()
  with caplog.at_level(logging.INFO, logger="attention"):
    out = attend(Q, K, V, mask=Mask(causal=True))
    attend(Q, K, V)
  assert sum("impl='auto' chose 'xla'" in r.getMessage() for r in caplog.records) == 1
  ref = attend(Q, K, V, mask=Mask(causal=True), impl="reference")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_block_sizes_override_is_used():
  out = attend(Q, K, V, mask=Mask(causal=True), impl="xla", block_sizes=BlockSizes(8, 8))
  ref = attend(Q, K, V, mask=Mask(causal=True), impl="reference")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
