"""model.remat: every rematerialisation policy gives the gradients of "none" (remat changes what the
backward pass stores, never what it computes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention.testing import rel_err
from flax import nnx

from models import build_model, presets
from models.config import REMAT_POLICIES


def _grads(cfg, tokens, seg):
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    logits, aux = nnx.merge(graphdef, p)(tokens, segment_ids=seg, return_aux=True)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 7]) + sum(aux.values())

  return jax.jit(jax.grad(loss))(params)


def test_remat_policies_give_the_gradients_of_none():
  cfg = presets.get("decoder_tiny").replace(num_layers=3, attention_pattern="LGD", window=(4, 0), dsa_top_k=6,
                                            dsa_index_heads=2, dsa_index_dim=8, dsa_rope_dim=4,
                                            attention_impl="reference")
  tokens = jax.random.randint(jax.random.key(0), (2, 20), 0, 256)
  seg = jnp.asarray(np.repeat([[1] * 12 + [2] * 8], 2, axis=0), jnp.int32)
  ref = _grads(cfg, tokens, seg)
  for policy in REMAT_POLICIES[1:]:
    got = _grads(cfg.replace(remat=policy), tokens, seg)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
      assert rel_err(b, a) < 1e-6, f"{policy} {jax.tree_util.keystr(path)}"


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat must be one of"):
    presets.get("decoder_tiny").replace(remat="some")


def test_full_remat_shrinks_the_compiled_backward():
  """The saving shows in the CPU compiler's own memory analysis (benchmarks/train_memory relies on it)."""
  cfg = presets.get("decoder_tiny").replace(num_layers=6, max_len=512)
  tokens = jax.ShapeDtypeStruct((1, 512), jnp.int32)

  def temp_bytes(cfg):
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    loss = lambda p, t: jnp.sum(nnx.merge(graphdef, p).features(t)[0])
    return jax.jit(jax.grad(loss)).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(cfg.replace(remat="full")) < 0.5 * temp_bytes(cfg)
