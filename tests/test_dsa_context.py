"""DSA under context parallelism (attention/dsa/context.py): 8 fake devices equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from attention import Mask
from attention.dsa import dsa_self_attention


def _inputs(seed, b=2, length=32, n=4, kh=1, h=8, hi=2, di=8):
  ks = jax.random.split(jax.random.key(seed), 6)
  shapes = [(b, length, n, h), (b, length, kh, h), (b, length, kh, h), (b, length, hi, di), (b, length, di),
            (b, length, hi)]
  return [jax.random.normal(k, s, jnp.float32) for k, s in zip(ks, shapes)]


@pytest.mark.parametrize("sparse,mask,local_keys", [(True, Mask(causal=True), 0),
                                                    (False, Mask(causal=True, window=(9, 0)), 0),
                                                    (True, Mask(causal=True), 3)])  # the window crosses shards
def test_context_4_equals_one_device_forward_and_grads(sparse, mask, local_keys):
  """Mesh (data=2, context=4): out, indexer KL and the gradients of all six inputs match one device."""
  args = _inputs(0)
  seg = jnp.asarray(np.repeat([[0] * 13 + [1] * 19], 2, 0), jnp.int32)  # a document boundary inside a shard

  def loss(*xs):
    out, kl = dsa_self_attention(*xs, top_k=5, mask=mask, segment_ids=seg, sparse=sparse, with_kl=True,
                                 impl="xla", topk_impl="xla", score_dtype=jnp.float32,
                                 local_keys=local_keys)
    return jnp.sum(out * jnp.cos(out)) + kl, (out, kl)

  fn = jax.jit(jax.grad(loss, argnums=tuple(range(6)), has_aux=True))
  want = fn(*args)
  mesh = jax.make_mesh((2, 4), ("data", "context"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:8])
  with jax.set_mesh(mesh):
    got = fn(*args)
    text = fn.lower(*args).as_text()
  assert "all_gather" in text and "reduce_scatter" in text  # K/V/k_idx gathered, their grads scattered
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
