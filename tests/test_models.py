"""Tests of models/: config, layer patterns, masking semantics, KV-cache decoding, impls, presets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
import models
from models import AttentionType, ModelConfig, build_model, presets

G, L = AttentionType.GLOBAL, AttentionType.LOCAL


def _forward(model, tokens, segment_ids=None, return_aux=False):
  return nnx.jit(lambda m, t, s: m(t, segment_ids=s, return_aux=return_aux))(model, tokens, segment_ids)


def _tokens(seed, shape, vocab=256):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


# ---- config ----

def test_config_pattern_roundtrip_and_validation():
  cfg = presets.get("decoder_tiny").replace(num_layers=5, attention_pattern="LLG")
  assert cfg.attention_pattern == (L, L, G, L, L)
  back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert back == cfg
  assert presets.get("modernbert_base").attention_pattern[:6] == (G, L, L, G, L, L)
  with pytest.raises(ValueError, match="num_kv_heads"):
    cfg.replace(num_kv_heads=3)
  with pytest.raises(ValueError, match="attention_pattern"):
    cfg.replace(attention_pattern="GX")
  with pytest.raises(ValueError, match="bogus"):
    cfg.replace(bogus=1)
  with pytest.raises(ValueError, match="dtype"):
    cfg.replace(dtype="float64")
  with pytest.raises(ValueError, match="encoder"):
    presets.get("encoder_tiny").replace(attention_pattern="GD")
  with pytest.raises(ValueError, match="preset"):
    presets.get("gpt5")


def test_layer_types_follow_pattern():
  cfg = presets.get("encoder_tiny").replace(num_layers=7)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  types = [b.attn.layer_type for b in model.blocks]
  assert types == [G if i % 3 == 0 else L for i in range(7)]
  for b, t in zip(model.blocks, types):
    assert b.attn.mask == (attention.Mask() if t is G else attention.Mask(window=(16, 16)))
    assert b.attn.theta == (160000.0 if t is G else 10000.0)
  assert model.blocks[0].attn_norm is None and all(b.attn_norm is not None for b in model.blocks[1:])
  dec = build_model(presets.get("decoder_tiny").replace(num_layers=3, attention_pattern="LG"), rngs=nnx.Rngs(0))
  assert [b.attn.mask for b in dec.blocks] == [attention.Mask(causal=True, window=(32, 0)),
                                               attention.Mask(causal=True), attention.Mask(causal=True, window=(32, 0))]


def test_logical_axis_names_and_param_counts():
  model = build_model(presets.get("decoder_tiny").replace(tie_embeddings=False), rngs=nnx.Rngs(0))
  names = jax.tree.leaves(models.logical_axis_names(model), is_leaf=lambda x: isinstance(x, tuple))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert len(names) == len(params) > 0
  for n, p in zip(names, params):
    assert len(n) == p.ndim and all(a is None or a in models.LOGICAL_AXES for a in n), (n, p.shape)
  # Published sizes: ModernBERT-base 149M, -large 395M; computed from shapes only.
  assert abs(models.param_count(presets.get("modernbert_base")) - 149.0e6) < 1.5e6
  assert abs(models.param_count(presets.get("modernbert_large")) - 395.0e6) < 4e6
  assert 115e6 < models.param_count(presets.get("decoder_125m")) < 135e6
  assert 0.9e9 < models.param_count(presets.get("decoder_1b")) < 1.3e9


def test_attention_flops_per_token():
  cfg = presets.get("decoder_tiny").replace(num_layers=2, attention_pattern="GL", window=(7, 0))
  per_key = 4 * cfg.num_heads * cfg.head_dim
  t = 100
  local = (sum(range(1, 9)) + 8 * (t - 8)) / t  # query i sees min(i, 7) + 1 keys
  assert models.attention_flops_per_token(cfg, t) == pytest.approx(per_key * ((t + 1) / 2 + local))
  enc = presets.get("encoder_tiny").replace(num_layers=1)
  assert models.attention_flops_per_token(enc, 64) == pytest.approx(per_key * 64)


# ---- forward semantics ----

@pytest.mark.parametrize("name", ["decoder_tiny", "encoder_tiny"])
def test_forward_shapes_errors_and_aux(name):
  cfg = presets.get(name).replace(max_len=64)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  logits, aux = _forward(model, _tokens(0, (2, 24)), return_aux=True)
  assert logits.shape == (2, 24, 256) and logits.dtype == jnp.float32 and aux == {}
  assert bool(jnp.all(jnp.isfinite(logits))) and float(jnp.std(logits)) > 0
  with pytest.raises(ValueError, match="65.*64"):
    model(_tokens(0, (1, 65)))
  with pytest.raises(ValueError, match="segment_ids"):
    model(_tokens(0, (1, 8)), segment_ids=jnp.zeros((1, 7), jnp.int32))


@pytest.mark.parametrize("name", ["decoder_tiny", "encoder_tiny"])
def test_local_equals_global_within_window_and_differs_beyond(name):
  base = presets.get(name).replace(num_layers=2, rope_theta=10000.0, window=(12, 12))
  glob = build_model(base.replace(attention_pattern="G"), rngs=nnx.Rngs(3))
  loc = build_model(base.replace(attention_pattern="L"), rngs=nnx.Rngs(3))  # same init: same parameters
  short, long = _tokens(1, (2, 13)), _tokens(2, (2, 48))
  if name == "decoder_tiny":  # a causal window of 12 sees everything in 13 tokens
    np.testing.assert_allclose(_forward(loc, short), _forward(glob, short), rtol=1e-5, atol=1e-5)
  diff = jnp.abs(_forward(loc, long) - _forward(glob, long))
  assert float(diff[:, -10:].max()) > 1e-3  # late tokens lose their far context


@pytest.mark.parametrize("name", ["decoder_tiny", "encoder_tiny"])
def test_packing_isolation(name):
  model = build_model(presets.get(name).replace(attention_pattern="GL", window=(8, 8)), rngs=nnx.Rngs(0))
  seg = jnp.array([[1] * 20 + [2] * 16])
  a = _tokens(1, (1, 36))
  b = a.at[:, :20].set(_tokens(2, (1, 20)))  # change document 1 only
  la, lb = _forward(model, a, segment_ids=seg), _forward(model, b, segment_ids=seg)
  np.testing.assert_allclose(la[:, 20:], lb[:, 20:], rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(la[:, :20] - lb[:, :20]).max()) > 1e-3
  alone = _forward(model, a[:, 20:])  # positions restart per document: doc 2 alone gives the same logits
  np.testing.assert_allclose(la[:, 20:], alone, rtol=1e-5, atol=1e-5)


def _impls():
  return ["reference", "xla"] + (["pallas"] if "pallas_gpu" in attention.REGISTRY else [])


@pytest.mark.parametrize("name", ["decoder_tiny", "encoder_tiny"])
def test_every_impl_gives_the_same_outputs_and_grads(name):
  pattern = "GLD" if name == "decoder_tiny" else "GL"  # DSA: sparse_attend runs with the impl too
  base = presets.get(name).replace(num_layers=len(pattern), attention_pattern=pattern, window=(8, 8), dsa_top_k=12,
                                   dsa_index_heads=2, dsa_index_dim=8, dsa_rope_dim=4, dsa_score_dtype="float32")
  tokens, seg = _tokens(4, (2, 40)), jnp.array([[1] * 25 + [2] * 15, [1] * 40])

  def loss(model):
    logits = model(tokens, segment_ids=seg)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 7]), logits

  results = {}
  for impl in _impls():
    model = build_model(base.replace(attention_impl=impl), rngs=nnx.Rngs(0))
    (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    results[impl] = (logits, grads)
  ref_logits, ref_grads = results.pop("reference")
  for logits, grads in results.values():
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6), grads, ref_grads)


def test_bfloat16_close_to_float32():
  cfg = presets.get("decoder_tiny")
  tokens = _tokens(5, (2, 32))
  f32 = _forward(build_model(cfg, rngs=nnx.Rngs(0)), tokens)
  bf16 = _forward(build_model(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)), tokens)
  assert bf16.dtype == jnp.float32
  assert float(jnp.abs(bf16 - f32).max()) < 2e-2 * float(jnp.abs(f32).max()) + 2e-2


# ---- KV cache and generation ----

def _decode_all(model, tokens, prompt_lens):
  """Prefill each row's prompt, then feed the row's true next tokens one by one; logits per position."""
  b, t = tokens.shape
  lens = np.asarray(prompt_lens)
  prompt = jnp.where(jnp.arange(t)[None] < lens[:, None], tokens, 0)[:, :lens.max()]
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state):
    m = nnx.merge(graphdef, state)
    logits, cache = m.prefill(prompt, jnp.asarray(lens), t)

    def step(cache, _):
      nxt = tokens[jnp.arange(b), jnp.minimum(cache["pos"], t - 1)]
      step_logits, cache = m.decode_step(nxt, cache)
      return cache, step_logits

    _, rest = jax.lax.scan(step, cache, None, length=t - lens.min())
    # [B, steps + 1, V]: logits at positions prompt_len - 1, prompt_len, ...
    return jnp.concatenate([logits[jnp.arange(b), lens - 1][:, None], rest.transpose(1, 0, 2)], axis=1)

  return run(state)


@pytest.mark.parametrize("pattern", ["G", "L", "LG"])
def test_kv_cache_decode_matches_full_forward(pattern):
  cfg = presets.get("decoder_tiny").replace(num_layers=2, attention_pattern=pattern, window=(5, 0), max_len=64)
  model = build_model(cfg, rngs=nnx.Rngs(1))
  tokens = _tokens(6, (3, 20))
  lens = jnp.array([4, 9, 13], jnp.int32)  # different prompt lengths decode together
  full = _forward(model, tokens)
  dec = _decode_all(model, tokens, lens)
  for row in range(3):
    start = int(lens[row]) - 1
    n = 20 - start
    np.testing.assert_allclose(dec[row, :n], full[row, start:], rtol=2e-5, atol=2e-5)


def test_generate_greedy_matches_argmax_loop_and_sampling_rules():
  cfg = presets.get("decoder_tiny").replace(attention_pattern="LG", window=(4, 0), max_len=64)
  model = build_model(cfg, rngs=nnx.Rngs(2))
  prompts = [[5, 9, 11], [7, 1, 3, 200, 17, 4]]
  out = models.generate(model, prompts, max_new_tokens=6)
  assert out.shape == (2, 6) and out.dtype == jnp.int32
  for row, p in enumerate(prompts):  # without a cache: greedy means each new token is the full forward's argmax
    seq = jnp.array([p + out[row].tolist()])
    assert out[row].tolist() == jnp.argmax(_forward(model, seq)[0, len(p) - 1:-1], axis=-1).tolist()
  key = jax.random.key(7)
  nucleus = models.generate(model, prompts, max_new_tokens=6, temperature=1.0, top_p=1e-6, rng=key)
  assert nucleus.tolist() == out.tolist()  # the nucleus of mass ~0 is the argmax token
  s1 = models.generate(model, prompts, max_new_tokens=6, temperature=1.0, rng=key)
  s2 = models.generate(model, prompts, max_new_tokens=6, temperature=1.0, rng=key)
  assert s1.tolist() == s2.tolist()
  eos = int(out[0, 1])
  stopped = models.generate(model, prompts, max_new_tokens=6, eos_id=eos)
  assert stopped[0].tolist() == out[0, :2].tolist() + [eos] * 4
  with pytest.raises(ValueError, match="max_len"):
    models.generate(model, prompts, max_new_tokens=60)
  with pytest.raises(ValueError, match="rng"):
    models.generate(model, prompts, max_new_tokens=2, temperature=0.5)
