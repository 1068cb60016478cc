"""Tests of chunked prefill (DecoderLM.prefill / prefill_last / generate with prefill_chunk): the same logits,
caches and tokens as the one-shot prefill (itself checked against the full forward), and compiled memory that
follows the chunk, not the prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from models import AttentionType, build_model, presets
from tests.test_models import _forward, _tokens


def _cfg(pattern, **kw):
  base = dict(num_layers=len(pattern), attention_pattern=pattern, window=(5, 0), max_len=64, dsa_index_heads=2,
              dsa_index_dim=8, dsa_rope_dim=4, dsa_top_k=6, dsa_score_dtype="float32")
  return presets.get("decoder_tiny").replace(**dict(base, **kw))


def _valid_cache(layer, layer_type, lens):
  """The cache entries a decode step can read, per row: positions < lens (GLOBAL/DSA), written slots (LOCAL)."""
  out = []
  for row, n in enumerate(lens):
    if layer_type is AttentionType.LOCAL:
      sp = np.asarray(layer["slot_pos"][row])
      keep = sp >= 0
      out.append((np.where(keep, sp, -1), *(np.asarray(layer[x][row])[keep] for x in ("k", "v"))))
    else:
      out.append(tuple(np.asarray(a[row, :n]) for name, a in sorted(layer.items())))
  return out


# (pattern, chunk): chunks that do not divide the prompt (23), shorter and longer than the local ring (W=6).
@pytest.mark.parametrize("pattern,chunk", [("G", 5), ("L", 4), ("D", 5), ("LG", 9)])
def test_chunked_prefill_matches_one_shot(pattern, chunk):
  cfg = _cfg(pattern)
  model = build_model(cfg, rngs=nnx.Rngs(1))
  tokens, lens, cache_len = _tokens(0, (3, 23)), np.array([23, 9, 14], np.int32), 30  # ragged rows

  every_position = pattern == "LG"  # prefill(prefill_chunk=...)'s per-position logits: one case is enough

  @nnx.jit
  def run(m):
    one_shot = m.prefill(tokens, jnp.asarray(lens), cache_len)
    last = m.prefill_last(tokens, jnp.asarray(lens), cache_len, prefill_chunk=chunk)
    chunked = m.prefill(tokens, jnp.asarray(lens), cache_len, prefill_chunk=chunk) if every_position else None
    return one_shot, last, chunked

  (ref, ref_cache), (last, cache), chunked = run(model)
  full = _forward(model, tokens)  # causal: the padding after a row's prompt changes nothing before it
  for row, n in enumerate(lens):
    np.testing.assert_allclose(ref[row, :n], full[row, :n], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(last, ref[np.arange(3), lens - 1], rtol=2e-5, atol=2e-5)
  if every_position:
    for row, n in enumerate(lens):
      np.testing.assert_allclose(chunked[0][row, :n], ref[row, :n], rtol=2e-5, atol=2e-5)
  assert cache["pos"].tolist() == ref_cache["pos"].tolist() == lens.tolist()
  for layer_type, a, b in zip(cfg.attention_pattern, ref_cache["layers"], cache["layers"]):
    assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)
    for want, mine in zip(*(_valid_cache(x, layer_type, lens) for x in (a, b))):
      for w, m in zip(want, mine):
        np.testing.assert_allclose(m, w, rtol=2e-5, atol=2e-5)


def test_generate_with_prefill_chunk_equals_one_shot_and_teacher_forced_argmax():
  model = build_model(_cfg("LD"), rngs=nnx.Rngs(2))
  prompts = [_tokens(3, (1, 17))[0].tolist(), _tokens(4, (1, 6))[0].tolist()]
  new = 5
  out = models.generate(model, prompts, max_new_tokens=new)
  chunked = models.generate(model, prompts, max_new_tokens=new, prefill_chunk=4)
  assert chunked.tolist() == out.tolist()
  # Teacher forcing: one forward over prompt + generated (right-padded into one batch; causal, so the
  # padding after a row's end changes nothing before it); greedy tokens are its argmax at each step.
  seqs = np.zeros((2, 17 + new), np.int32)
  for row, p in enumerate(prompts):
    seqs[row, :len(p) + new] = p + chunked[row].tolist()
  logits = _forward(model, jnp.asarray(seqs))
  for row, p in enumerate(prompts):
    assert chunked[row].tolist() == jnp.argmax(logits[row, len(p) - 1:len(p) + new - 1], -1).tolist()


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_prefill_chunk_rejects_bad_values(bad):
  model = build_model(_cfg("G"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="prefill_chunk"):
    models.generate(model, [[1, 2, 3]], max_new_tokens=2, prefill_chunk=bad)
  with pytest.raises(ValueError, match="prefill_chunk"):
    model.prefill_last(jnp.ones((1, 3), jnp.int32), jnp.array([3]), 8, prefill_chunk=bad)


def test_chunked_prefill_memory_follows_the_chunk_not_the_prompt():
  """Compiled temp bytes (no run): a fake chunking (e.g. one chunk of the whole prompt, or per-chunk
  arrays sized by the prompt) fails the first two checks."""
  cfg = _cfg("LGD", window=(16, 0), dsa_top_k=16, max_len=8192)
  graphdef, state = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)))

  def temp(t, chunk):
    f = jax.jit(lambda s, tok, n: nnx.merge(graphdef, s).prefill_last(tok, n, t, prefill_chunk=chunk))
    args = (state, jax.ShapeDtypeStruct((1, t), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32))
    return f.lower(*args).compile().memory_analysis().temp_size_in_bytes

  one_shot, chunked, short, bigger_chunk = temp(8192, None), temp(8192, 256), temp(2048, 256), temp(8192, 1024)
  assert 4 * chunked < one_shot, (chunked, one_shot)
  # 4x the prompt: under 2x the bytes (what grows is O(cache) layout copies of the blockwise impl, not
  # activations); 4x the chunk: over 1.8x.
  assert chunked < 2 * short, (chunked, short)
  assert bigger_chunk > 1.8 * chunked, (bigger_chunk, chunked)
