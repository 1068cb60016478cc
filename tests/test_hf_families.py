"""Hugging Face in and out, per family: a tiny random Llama (every rope_scaling type, explicit head_dim),
Qwen2 (biases, tied / untied, sliding layers), Mistral (sliding window) and ModernBERT is imported with
float32 logits within 1e-4 of transformers on inputs longer than original_max_position_embeddings and
the window; save_hf's folder, loaded by transformers' Auto classes, gives the original model's logits;
importing that folder again gives bit-identical parameters."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.rope import rope_frequencies
from models import build_model, hf_export, hf_import
from models.config import ModelConfig

torch = pytest.importorskip("torch", reason="the HF conformance tests need torch (CPU), the [test] extra")
transformers = pytest.importorskip("transformers", reason="the HF conformance tests need transformers")
from test_hf_import import _randomise  # noqa: E402 (needs torch, checked above)

T = 48  # > original_max_position_embeddings (16) and > the sliding window (8)
_BASE = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)  # head_dim != hidden / heads: it must be read, not derived
_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 16}
CASES = {
    "llama_default": ("LlamaConfig", dict(max_position_embeddings=64, tie_word_embeddings=True)),
    "llama_linear": ("LlamaConfig", dict(max_position_embeddings=64, rope_scaling={"rope_type": "linear",
                                                                                 "factor": 4.0})),
    # transformers' dynamic NTK takes L0 = max_position_embeddings and grows past it.
    "llama_dynamic": ("LlamaConfig", dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic",
                                                                                  "factor": 4.0})),
    "llama_yarn": ("LlamaConfig", dict(max_position_embeddings=64, rope_scaling=_YARN, attention_bias=True,
                                       mlp_bias=True)),
    "llama_llama3": ("LlamaConfig", dict(max_position_embeddings=64, rope_theta=500000.0, rope_scaling=_LLAMA3)),
    "qwen2_tied": ("Qwen2Config", dict(max_position_embeddings=64, rope_theta=1e6, tie_word_embeddings=True)),
    "qwen2_untied_sliding": ("Qwen2Config", dict(max_position_embeddings=64, rope_theta=1e6,
                                                 tie_word_embeddings=False, use_sliding_window=True,
                                                 sliding_window=8, max_window_layers=1)),
    "mistral_sliding": ("MistralConfig", dict(max_position_embeddings=64, sliding_window=8)),
}
PATTERNS = {"qwen2_untied_sliding": "GL", "mistral_sliding": "L"}


def _hf(cls, folder=None, config=None):
  model = cls.from_pretrained(folder) if folder else cls.from_config(config)
  model.config._attn_implementation = "eager"
  return model.eval()


def _logits(model, ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids)).logits.float().numpy()


def _params(model):
  return {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_bit_identical(a, b):
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), k


@pytest.mark.parametrize("case", list(CASES))
def test_family_import_export_round_trip(case, tmp_path):
  config_cls, kw = CASES[case]
  torch.manual_seed(0)
  hf_cfg = getattr(transformers, config_cls)(**_BASE, **kw)
  theirs = _randomise(_hf(transformers.AutoModelForCausalLM, config=hf_cfg), 1)
  theirs.save_pretrained(tmp_path / "hf")
  model, cfg = hf_import.load_hf(str(tmp_path / "hf"), attention_impl="xla")
  assert cfg.pattern_string() == PATTERNS.get(case, "G") and cfg.head_dim == 16
  if "sliding" in case:
    assert cfg.window == (7, 0)  # HF's sliding_window=8 counts the query itself
  ids = np.random.default_rng(2).integers(0, 61, (2, T))
  expected = _logits(theirs, ids)
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, t: m(t))(model, jnp.asarray(ids, jnp.int32))), expected,
                             rtol=1e-4, atol=1e-4)

  # Sharded above a size limit for one case (each tensor is < 8 KB here).
  out = str(tmp_path / "ours")
  hf_export.save_hf(model, cfg, out, max_shard_bytes=8000 if case == "llama_yarn" else 2**30)
  if case == "llama_yarn":
    with open(os.path.join(out, hf_import.INDEX_FILE)) as f:
      index = json.load(f)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
  reloaded = _hf(transformers.AutoModelForCausalLM, out)
  assert type(reloaded) is type(theirs)
  np.testing.assert_allclose(_logits(reloaded, ids), expected, rtol=1e-4, atol=1e-4)
  again, cfg_again = hf_import.load_hf(out, attention_impl="xla")
  _assert_bit_identical(model, again)
  assert cfg_again == cfg


def test_modernbert_export_round_trip(tmp_path):
  hf_cfg = transformers.ModernBertConfig(
      vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
      local_attention=16, max_position_embeddings=128, attention_bias=True, mlp_bias=True, norm_bias=True,
      pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
  torch.manual_seed(0)
  theirs = _randomise(_hf(transformers.AutoModelForMaskedLM, config=hf_cfg), 1)
  theirs.save_pretrained(tmp_path / "hf")
  model, cfg = hf_import.load_hf(str(tmp_path / "hf"))
  hf_export.save_hf(model, cfg, str(tmp_path / "ours"), token_ids={"pad_token_id": 0})
  ids = np.random.default_rng(3).integers(0, 97, (2, 40))
  np.testing.assert_allclose(_logits(_hf(transformers.AutoModelForMaskedLM, str(tmp_path / "ours")), ids),
                             _logits(theirs, ids), rtol=1e-4, atol=1e-4)
  again, cfg_again = hf_import.load_hf(str(tmp_path / "ours"))
  _assert_bit_identical(model, again)
  assert cfg_again == cfg


def test_export_refuses_what_no_family_computes(tmp_path):
  tiny = dict(vocab_size=32, d_model=16, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)
  config = lambda family=None, **kw: hf_export.hf_config(ModelConfig(**tiny, **kw), family)
  with pytest.raises(ValueError, match="attention_pattern='LG'.*qwen2"):
    config(attention_pattern="LG")
  with pytest.raises(ValueError, match="attention_pattern='L'.*Llama has no sliding window"):
    config("llama", attention_pattern="L")
  with pytest.raises(ValueError, match="rope_scaling.kind='yarn'"):
    config(attention_pattern="L", rope_scaling={"kind": "yarn", "factor": 4.0, "original_max_len": 16})
  with pytest.raises(ValueError, match="qkv_bias=False"):
    config("qwen2")
  with pytest.raises(ValueError, match="family='gpt2'"):
    config("gpt2")
  # Static NTK is the default rule with the enlarged base: the same frequencies.
  ntk = ModelConfig(**tiny, rope_scaling={"kind": "ntk", "factor": 4.0})
  written = config(rope_scaling={"kind": "ntk", "factor": 4.0})
  assert written["rope_scaling"] is None
  np.testing.assert_allclose(rope_frequencies(8, written["rope_theta"])[0],
                             rope_frequencies(8, ntk.rope_theta, ntk.rope_scaling)[0], rtol=1e-6)
  cfg = ModelConfig(**tiny, qkv_bias=True, attention_pattern="LG", window=(3, 0))
  model = build_model(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="attention_pattern='LG'.*all sliding or all full"):
    hf_export.save_hf(model, cfg, str(tmp_path), family="mistral")
  assert not os.listdir(tmp_path)  # nothing written before the error
  hf_export.save_hf(model, cfg, str(tmp_path))  # Qwen2 takes mixed layers
  with open(tmp_path / "config.json") as f:
    written = json.load(f)
  assert written["architectures"] == ["Qwen2ForCausalLM"] and written["sliding_window"] == 4
  assert written["layer_types"] == ["sliding_attention", "full_attention"]
