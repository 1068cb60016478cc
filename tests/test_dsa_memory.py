"""DSA memory: compiled (never run) temp bytes and HLO shapes at long L; the xla impls stay O(T*k)."""

import math
import re

import jax
import jax.numpy as jnp

from attention.dsa import sparse_attend, topk_indices

_SD = jax.ShapeDtypeStruct
B, N, KV, H, HI, DI = 1, 4, 1, 64, 4, 32


def _sparse_grad(impl, t, s, top_k):
  args = (_SD((B, t, N, H), jnp.bfloat16), _SD((B, s, KV, H), jnp.bfloat16), _SD((B, s, KV, H), jnp.bfloat16),
          _SD((B, t, top_k), jnp.int32))
  loss = lambda q, k, v, i: sparse_attend(q, k, v, i, impl=impl).astype(jnp.float32).sum()
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()


def _topk(impl, t, s, top_k):
  args = (_SD((B, t, HI, DI), jnp.bfloat16), _SD((B, s, DI), jnp.bfloat16), _SD((B, t, HI), jnp.float32))
  return jax.jit(lambda a, b, c: topk_indices(a, b, c, top_k=top_k, impl=impl)).lower(*args).compile()


def _temp(compiled):
  return compiled.memory_analysis().temp_size_in_bytes


def test_xla_temp_memory_under_a_twentieth_of_dense_at_32k():
  t = s = 32768
  top_k = 256
  assert _temp(_sparse_grad("xla", t, s, top_k)) * 20 < _temp(_sparse_grad("reference", t, s, top_k))
  assert _temp(_topk("xla", t, s, top_k)) * 20 < _temp(_topk("reference", t, s, top_k))


def _tdim_sdim_arrays(compiled, t, s):
  """Shapes in the compiled HLO that have both a T and an S dimension, or T*S/16 elements or more."""
  bad = []
  for dims in re.findall(r"\[([0-9,]+)\]", compiled.as_text()):
    shape = [int(d) for d in dims.split(",") if d]
    if (t in shape and s in shape) or math.prod(shape) >= t * s // 16:
      bad.append(shape)
  return bad


def test_no_array_with_both_t_and_s_dimensions_in_compiled_hlo():
  t, s, top_k = 16384, 24576, 128  # T != S, so each dimension is recognisable
  assert _tdim_sdim_arrays(_sparse_grad("reference", t, s, top_k), t, s)  # the check does see dense arrays
  assert not _tdim_sdim_arrays(_sparse_grad("xla", t, s, top_k), t, s)
  assert not _tdim_sdim_arrays(_topk("xla", t, s, top_k), t, s)
