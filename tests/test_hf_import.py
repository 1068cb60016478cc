"""Conformance with Hugging Face: tiny random ModernBertForMaskedLM / LlamaForCausalLM saved to disk,
imported with models.hf_import, logits compared in float32 (also on a right-padded batch)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import generate, hf_import

torch = pytest.importorskip("torch", reason="the HF conformance tests need torch (CPU), the [test] extra")
transformers = pytest.importorskip("transformers", reason="the HF conformance tests need transformers")


def _randomise(model, seed):
  """HF init leaves norms at 1 and biases at 0; perturb everything so every tensor's mapping is tested."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def _save(model, tmp_path):
  model.save_pretrained(tmp_path, safe_serialization=True)
  return str(tmp_path)


def _batch(vocab, seed, b=2, t=40, pad=13):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (b, t))
  mask = np.ones((b, t), np.int64)
  mask[1, t - pad:] = 0  # row 1 is right-padded
  return ids, mask


def _hf_logits(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


def _ours(model, ids, mask):
  seg = hf_import.attention_mask_to_segment_ids(mask)
  return np.asarray(nnx.jit(lambda m, t, s: m(t, segment_ids=s))(model, jnp.asarray(ids, jnp.int32), seg))


def _compare(ours, theirs, mask):
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
def test_modernbert_matches_hugging_face(tmp_path, bias):
  hf_cfg = transformers.ModernBertConfig(
      vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
      local_attention=16, max_position_embeddings=128, attention_bias=bias, mlp_bias=bias, norm_bias=bias,
      pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
  torch.manual_seed(0)
  hf = _randomise(transformers.ModernBertForMaskedLM(hf_cfg), 1)
  hf.config._attn_implementation = "eager"
  model, cfg = hf_import.load_hf(_save(hf, tmp_path), attention_impl="xla")
  assert cfg.attention_pattern == cfg.replace(attention_pattern="GLL").attention_pattern and cfg.window == (8, 8)
  ids, mask = _batch(97, 2)
  _compare(_ours(model, ids, mask), _hf_logits(hf, ids, mask), mask)


@pytest.mark.parametrize("variant", ["tied_mha", "gqa_linear_scaling"])
def test_llama_matches_hugging_face_and_generates_the_same(tmp_path, variant):
  kw = dict(tie_word_embeddings=True) if variant == "tied_mha" else dict(
      num_key_value_heads=2, tie_word_embeddings=False, rope_scaling={"rope_type": "linear", "factor": 4.0})
  hf_cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=128, **kw)
  torch.manual_seed(0)
  hf = _randomise(transformers.LlamaForCausalLM(hf_cfg), 3)
  hf.config._attn_implementation = "eager"
  model, cfg = hf_import.load_hf(_save(hf, tmp_path), attention_impl="xla")
  assert cfg.tie_embeddings == (variant == "tied_mha")
  ids, mask = _batch(101, 4)
  _compare(_ours(model, ids, mask), _hf_logits(hf, ids, mask), mask)
  prompt = ids[:1, :7]
  with torch.no_grad():
    theirs = hf.generate(torch.tensor(prompt), max_new_tokens=5, do_sample=False, min_new_tokens=5)[0, 7:]
  assert generate(model, prompt.tolist(), max_new_tokens=5)[0].tolist() == theirs.tolist()


def test_clear_errors_for_missing_and_mismatched_tensors(tmp_path):
  hf_cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, max_position_embeddings=64)
  hf = transformers.LlamaForCausalLM(hf_cfg)
  folder = _save(hf, tmp_path)
  hf_dict, tensors = hf_import.load_folder(folder)
  cfg = hf_import.config_from_hf(hf_dict)
  missing = {k: v for k, v in tensors.items() if k != "model.layers.0.mlp.up_proj.weight"}
  with pytest.raises(ValueError, match=r"missing tensor 'model.layers.0.mlp.up_proj.weight'"):
    hf_import.convert(cfg, missing)
  wrong = dict(tensors, **{"model.norm.weight": np.ones(17, np.float32)})
  with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(17,\).*needs \(16,\)"):
    hf_import.convert(cfg, wrong)
  with pytest.raises(ValueError, match="not used.*extra.weight"):
    hf_import.convert(cfg, dict(tensors, **{"extra.weight": np.ones(3, np.float32)}))
  with open(os.path.join(folder, "config.json")) as f:
    bad = dict(json.load(f), model_type="gpt2")
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    hf_import.config_from_hf(bad)


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},  # Llama 3.1's values
    {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096, "beta_fast": 16.0},
    {"rope_type": "dynamic", "factor": 4.0}])
def test_rope_rules_match_transformers_formulas(rope):
  from attention.rope import rope_frequencies
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  hf_cfg = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, head_dim=128, rope_theta=500000.0,
                                    max_position_embeddings=131072 if rope["rope_type"] != "dynamic" else 8192,
                                    rope_scaling=dict(rope))
  seq_len = 20000  # past L0: dynamic NTK grows its base with the length
  theirs, their_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg, "cpu", seq_len=seq_len)
  cfg = hf_import.config_from_hf(json.loads(hf_cfg.to_json_string()))
  ours, our_scale = rope_frequencies(128, cfg.rope_theta, cfg.rope_scaling, seq_len=seq_len)
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=2e-6)
  np.testing.assert_allclose(our_scale, their_scale, rtol=1e-6)
  if rope["rope_type"] == "llama3":  # the rule moves the low frequencies and keeps the high ones
    plain = np.asarray(rope_frequencies(128, 500000.0)[0])
    assert np.isclose(ours[0], plain[0]) and np.isclose(ours[-1], plain[-1] / 8)


@pytest.mark.parametrize("field, value, named", [
    ("quantization_config", {"quant_method": "gptq"}, "quantization_config"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.7},
     "mscale"),
    ("rope_scaling", {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "longrope"),
    ("hidden_act", "gelu", "hidden_act"),
    ("attention_dropout", 0.1, "attention_dropout")])
def test_unsupported_config_fields_are_named(field, value, named):
  hf = json.loads(transformers.LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2).to_json_string())
  hf.pop("rope_parameters", None)
  with pytest.raises(ValueError, match=named):
    hf_import.config_from_hf(dict(hf, **{field: value}))
  mistral = json.loads(transformers.MistralConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, sliding_window=8).to_json_string())
  with pytest.raises(ValueError, match="attention_bias"):  # Llama's field, not Mistral's
    hf_import.config_from_hf(dict(mistral, attention_bias=True))
