"""training.loss: the chunked output projection + cross-entropy equals the one-chunk loss (value and
gradients, tied and untied embeddings, causal LM and MLM), and its compiled program has no [B, T, V]
float32 array."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention.testing import rel_err
from flax import nnx

from configs import decoder_tiny
from data.tokenizer import ByteTokenizer
from models import build_model
from training import from_config_dict, step


def _setup(preset="decoder_tiny", t=24, **model):
  c = decoder_tiny.get_config("tiny", preset=preset)
  c.model.update(attention_impl="reference", **model)
  cfg = from_config_dict(c)
  graphdef, params = nnx.split(build_model(cfg.model, rngs=nnx.Rngs(0)), nnx.Param)
  apply = step.make_apply(graphdef, nnx.eval_shape(lambda: params))
  rng = np.random.default_rng(0)
  b = 2
  seg = np.ones((b, t), np.int32)
  seg[0, 10:], seg[1, -3:] = 2, 0  # two documents in row 0, padding at the end of row 1
  batch = {"tokens": jnp.asarray(rng.integers(0, 256, (b, t)), jnp.int32), "segment_ids": jnp.asarray(seg),
           "positions": jnp.asarray(np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)))}
  return c, apply, nnx.to_pure_dict(params), batch


def _objective(c, apply, chunk):
  c = c.copy_and_resolve_references()
  c.loss_chunk_tokens = chunk
  obj = step.make_objective(from_config_dict(c), apply, ByteTokenizer())
  return jax.jit(jax.value_and_grad(lambda p, b: obj(p, b, jax.random.key(1), 1.0)[0]))


@pytest.mark.parametrize("preset,tie", [("decoder_tiny", True), ("decoder_tiny", False), ("encoder_tiny", True)])
def test_chunked_loss_and_grads_equal_one_chunk(preset, tie):
  c, apply, params, batch = _setup(preset, tie_embeddings=tie)
  loss0, grads0 = _objective(c, apply, 0)(params, batch)
  # 7 does not divide the 48 tokens: the last chunk is completed with zero-weight tokens.
  loss7, grads7 = _objective(c, apply, 7)(params, batch)
  assert float(loss0) > 0
  np.testing.assert_allclose(loss7, loss0, rtol=1e-6)
  for (path, g0), g7 in zip(jax.tree_util.tree_leaves_with_path(grads0), jax.tree.leaves(grads7)):
    assert float(jnp.max(jnp.abs(g0))) > 0, jax.tree_util.keystr(path)
    assert rel_err(g7, g0) < 1e-5, jax.tree_util.keystr(path)


def _f32_arrays(hlo: str):
  return [tuple(int(d) for d in m.split(",")) for m in re.findall(r"f32\[([\d,]+)\]", hlo)]


def test_no_btv_float32_array_in_the_chunked_program():
  vocab = 2048  # V and B * T = 128 large next to D = 64: only logits-sized arrays reach B * T * V elements
  c, apply, params, batch = _setup(t=64, vocab_size=vocab)
  b, t = batch["tokens"].shape
  big = lambda hlo: [s for s in _f32_arrays(hlo) if vocab in s and np.prod(s) >= b * t * vocab]
  hlo = lambda chunk: _objective(c, apply, chunk).lower(params, batch).compile().as_text()
  assert big(hlo(0)), "the one-chunk program should hold [B, T, V] logits (else this test proves nothing)"
  assert not big(hlo(16))
