"""Blockwise XLA flash attention: agreement with jax.nn.dot_product_attention and linear compiled memory.

Forward, lse and gradients against the reference over every case: tests/test_attention_conformance.py.
"""

import jax

from attention import BlockSizes, Mask, attend
from attention.testing import random_qkv, rel_err

BS = BlockSizes(64, 32)  # small tiles so short inputs span many blocks and partial tail blocks


def test_matches_jax_dot_product_attention_with_gradients():
  q, k, v, ct = random_qkv(5, 2, 200, 200, 4, 2, 32)
  for causal, window in [(True, None), (False, (40, 40))]:
    mask = Mask(causal=causal, window=window)
    theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=window)
    ours = lambda q, k, v: attend(q, k, v, mask=mask, impl="xla", block_sizes=BS)
    assert rel_err(ours(q, k, v), theirs(q, k, v)) < 1e-5
    g1 = jax.vjp(ours, q, k, v)[1](ct)
    g2 = jax.vjp(theirs, q, k, v)[1](ct)
    for a, b in zip(g1, g2):
      assert rel_err(a, b) < 1e-5


def test_compiled_memory_is_linear_in_length():
  """fwd+bwd temp bytes at B=1, N=8, H=64: >= 20x below the dense reference at 16K; <= 10x growth 2K->16K.

  Compile only (memory_analysis is deterministic); the reference's 16K score array is never allocated.
  """
  from benchmarks.attention_memory import temp_bytes
  causal = Mask(causal=True)
  xla_2k, xla_16k = (temp_bytes("xla", causal, (1, L, 8, 64)) for L in (2048, 16384))
  ref_16k = temp_bytes("reference", causal, (1, 16384, 8, 64))
  assert ref_16k >= 20 * xla_16k, (ref_16k, xla_16k)
  assert xla_16k <= 10 * xla_2k, (xla_2k, xla_16k)
