"""Export our models as Hugging Face checkpoints: config.json + safetensors that transformers' Auto classes
(and so vLLM, lm-eval-harness, ...) load, sharded with model.safetensors.index.json above a size limit.

The tensor layout is models.hf_import.tensor_map run backwards, so import -> export -> import gives
bit-identical parameters. The family is the Hugging Face architecture that computes exactly what our
config does:

  llama      all GLOBAL layers, optional biases on q/k/v/o and the MLP
  qwen2      q/k/v biases without an output bias (cfg.qkv_bias); GLOBAL and LOCAL layers in any order
  mistral    all GLOBAL or all LOCAL layers (the window becomes sliding_window = left + 1)
  modernbert the encoder

RoPE scaling becomes rope_scaling: linear, dynamic, yarn, llama3 by name; static NTK is the default rule
with the enlarged base theta * s^(D/(D-2)), which is what it computes. Anything without an exact
counterpart (DSA layers, LOCAL layers in Llama, scaled RoPE on LOCAL layers, ...) raises ValueError
naming the field and the families that would take it.

A library: export.py (beside train.py) is the command that exports a train.py run,
  python export.py --workdir=runs/demo --out=exported/demo [--step=N] [--family=qwen2]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import safetensors.numpy
from flax import nnx

from models.config import AttentionType, ModelConfig
from models.hf_import import ARCHITECTURES, INDEX_FILE, tensor_map

FAMILIES = tuple(ARCHITECTURES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def infer_family(cfg: ModelConfig) -> str:
  """The family save_hf picks when none is given (see the module docstring)."""
  if cfg.arch == "encoder":
    return "modernbert"
  if cfg.qkv_bias and not cfg.attention_bias:
    return "qwen2"
  return "mistral" if set(cfg.attention_pattern) == {AttentionType.LOCAL} else "llama"


def _fail(field: str, value, why: str):
  raise ValueError(f"cannot export {field}={value!r}: {why}")


def _rope_scaling(cfg: ModelConfig) -> tuple[float, dict | None, int]:
  """(rope_theta, rope_scaling dict or None, max_position_embeddings) of a decoder."""
  r, theta = cfg.rope_scaling, cfg.rope_theta
  if r.kind == "none" or r.factor == 1.0:
    return theta, None, cfg.max_len
  if r.kind == "ntk":
    return theta * r.factor ** (cfg.head_dim / (cfg.head_dim - 2)), None, cfg.max_len
  if r.kind == "linear":
    return theta, {"rope_type": "linear", "factor": r.factor}, cfg.max_len
  if r.kind == "dynamic_ntk":  # transformers' dynamic rule reads L0 from max_position_embeddings
    return theta, {"rope_type": "dynamic", "factor": r.factor}, r.original_max_len
  if r.kind == "yarn":
    return theta, {"rope_type": "yarn", "factor": r.factor, "original_max_position_embeddings": r.original_max_len,
                   "beta_fast": r.beta_fast, "beta_slow": r.beta_slow,
                   **({} if r.attention_factor is None else {"attention_factor": r.attention_factor})}, cfg.max_len
  return theta, {"rope_type": "llama3", "factor": r.factor, "original_max_position_embeddings": r.original_max_len,
                 "low_freq_factor": r.low_freq_factor, "high_freq_factor": r.high_freq_factor}, cfg.max_len


def _decoder_config(cfg: ModelConfig, family: str) -> dict:
  letters = cfg.pattern_string()
  if cfg.smeared_keys:
    _fail("smeared_keys", True, f"the {family} family has no smeared keys")
  if cfg.logn_attention:
    _fail("logn_attention", cfg.logn_attention, f"the {family} family's attention has no log-n scale")
  if AttentionType.DSA in cfg.attention_pattern:
    _fail("attention_pattern", letters, "DSA layers have no Hugging Face Llama/Qwen2/Mistral counterpart")
  for field, value, want in (("mlp_kind", cfg.mlp_kind, "swiglu"), ("norm_kind", cfg.norm_kind, "rms"),
                             ("norm_bias", cfg.norm_bias, False)):
    if value != want:
      _fail(field, value, f"the {family} family has {field}={want!r}")
  local = AttentionType.LOCAL in cfg.attention_pattern
  if family == "llama" and local:
    _fail("attention_pattern", letters, "Llama has no sliding window; all-LOCAL exports as family='mistral', "
          "mixed LOCAL/GLOBAL as family='qwen2' (which needs qkv_bias)")
  if family == "mistral" and local and letters != "L":
    _fail("attention_pattern", letters, "Mistral layers are all sliding or all full; use family='qwen2'")
  if family == "qwen2" and not (cfg.qkv_bias and not cfg.attention_bias):
    _fail("qkv_bias", cfg.qkv_bias, "Qwen2 has q/k/v biases and no output bias (attention_bias="
          f"{cfg.attention_bias})")
  if family != "llama":
    for field in ("attention_bias", "mlp_bias"):
      if getattr(cfg, field):
        _fail(field, True, f"only the llama family has {field}")
  if family == "llama" and cfg.qkv_bias and not cfg.attention_bias:
    _fail("qkv_bias", True, "Llama's attention_bias covers q/k/v and the output; use family='qwen2'")
  if local and cfg.rope_scaling.kind != "none":
    _fail("rope_scaling.kind", cfg.rope_scaling.kind, "transformers scales the RoPE of sliding-window layers too, "
          "ours keep it unscaled")
  if local and cfg.rope_theta_local != cfg.rope_theta:
    _fail("rope_theta_local", cfg.rope_theta_local, f"{family} has one rope_theta ({cfg.rope_theta}) for all layers")
  theta, scaling, max_pos = _rope_scaling(cfg)
  window = cfg.window[0] + 1  # HF: key j visible from i iff i - j < sliding_window
  out = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
         "max_position_embeddings": max_pos, "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
         "rope_theta": theta, "rope_scaling": scaling, "attention_dropout": 0.0}
  if family == "llama":
    out.update(attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias, pretraining_tp=1)
  elif family == "mistral":
    out["sliding_window"] = window if local else None
  else:
    types = ["sliding_attention" if t is AttentionType.LOCAL else "full_attention" for t in cfg.attention_pattern]
    out.update(use_sliding_window=local, sliding_window=window if local else None, layer_types=types,
               max_window_layers=types.index("sliding_attention") if local else cfg.num_layers)
  return out


def _modernbert_config(cfg: ModelConfig) -> dict:
  for field, value, want in (("smeared_keys", cfg.smeared_keys, False), ("logn_attention", cfg.logn_attention, 0),
                             ("mlp_kind", cfg.mlp_kind, "geglu"),
                             ("norm_kind", cfg.norm_kind, "layer"),
                             ("num_kv_heads", cfg.num_kv_heads, cfg.num_heads),
                             ("head_dim", cfg.head_dim, cfg.d_model // cfg.num_heads),
                             ("qkv_bias", cfg.qkv_bias and not cfg.attention_bias, False),
                             ("rope_scaling.kind", cfg.rope_scaling.kind, "none"),
                             ("window", cfg.window, (cfg.window[0], cfg.window[0]))):
    if value != want:
      _fail(field, value, f"ModernBERT needs {field}={want!r}")
  if cfg.head_dim * cfg.num_heads != cfg.d_model:
    _fail("head_dim", cfg.head_dim, f"ModernBERT needs num_heads * head_dim = d_model = {cfg.d_model}")
  types = ["sliding_attention" if t is AttentionType.LOCAL else "full_attention" for t in cfg.attention_pattern]
  out = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "hidden_activation": "gelu",
         "max_position_embeddings": cfg.max_len, "norm_eps": cfg.norm_eps, "norm_bias": cfg.norm_bias,
         "attention_bias": cfg.attention_bias, "mlp_bias": cfg.mlp_bias, "decoder_bias": True,
         "classifier_activation": "gelu", "tie_word_embeddings": True, "local_attention": 2 * cfg.window[0],
         "layer_types": types, "global_rope_theta": cfg.rope_theta, "local_rope_theta": cfg.rope_theta_local}
  letters = cfg.pattern_string()
  if letters[0] == "G" and set(letters[1:]) <= {"L"}:  # also for transformers 4.x, which has no layer_types
    out["global_attn_every_n_layers"] = len(letters)
  if AttentionType.DSA in cfg.attention_pattern:
    _fail("attention_pattern", letters, "an encoder has no DSA layers")
  return out


def hf_config(cfg: ModelConfig, family: str | None = None, token_ids: dict | None = None) -> dict:
  """The config.json dict of cfg as `family` (default: infer_family); ValueError if it has no exact match."""
  family = family or infer_family(cfg)
  if family not in FAMILIES:
    raise ValueError(f"family={family!r} is not supported (supported: {FAMILIES})")
  if (cfg.arch == "encoder") != (family == "modernbert"):
    _fail("arch", cfg.arch, f"family={family!r} is {'an encoder' if family == 'modernbert' else 'a decoder'}")
  body = _modernbert_config(cfg) if family == "modernbert" else _decoder_config(cfg, family)
  # Token ids written explicitly: a missing one would take transformers' default, which for ModernBERT lies
  # outside a small vocabulary (and is its embedding's padding_idx).
  ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **(token_ids or {})}
  return {"architectures": [ARCHITECTURES[family]], "model_type": family, **body, **ids,
          "torch_dtype": cfg.param_dtype}


def hf_tensors(model, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """{Hugging Face tensor name: array} of the model's parameters (every parameter used exactly once)."""
  params = {".".join(str(p) for p in path): np.asarray(var[...])
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  table, _ = tensor_map(cfg)
  mapped = {p.key for parts in table.values() for p in parts}
  if mapped != set(params):
    raise ValueError(f"parameters without a Hugging Face tensor: {sorted(set(params) - mapped)[:5]}; "
                     f"tensors without a parameter: {sorted(mapped - set(params))[:5]}")
  out = {}
  for name, parts in table.items():
    pieces = [p.to_hf(params[p.key]) for p in parts]
    out[name] = np.ascontiguousarray(pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0))
  return out


def _shards(tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list[list[str]]:
  """Tensor names grouped in order into shards of at most max_shard_bytes (a larger tensor alone)."""
  shards, size = [[]], 0
  for name, t in tensors.items():
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += t.nbytes
  return shards


def save_hf(model, cfg: ModelConfig, folder: str, *, family: str | None = None, max_shard_bytes: int = 5 * 2**30,
            token_ids: dict | None = None) -> str:
  """Write model as a Hugging Face checkpoint: config.json and model.safetensors, or above max_shard_bytes
  model-0000i-of-0000n.safetensors shards and model.safetensors.index.json.

  Args:
    model: a DecoderLM or Encoder built for cfg.
    cfg: its ModelConfig.
    folder: created if missing; earlier safetensors files and index in it are removed first.
    family: "llama" | "qwen2" | "mistral" | "modernbert"; default infer_family(cfg).
    max_shard_bytes: the largest shard (transformers' default limit is 5 GB).
    token_ids: bos_token_id / eos_token_id / pad_token_id for config.json.
  Returns:
    folder.
  """
  if max_shard_bytes < 1:
    raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
  config = hf_config(cfg, family, token_ids)
  tensors = hf_tensors(model, cfg)
  os.makedirs(folder, exist_ok=True)
  for name in os.listdir(folder):
    if name.endswith(".safetensors") or name == INDEX_FILE:
      os.remove(os.path.join(folder, name))
  shards = _shards(tensors, max_shard_bytes)
  files = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  for names, file in zip(shards, files):
    safetensors.numpy.save_file({n: tensors[n] for n in names}, os.path.join(folder, file),
                                metadata={"format": "pt"})
  if len(shards) > 1:
    index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
             "weight_map": {n: file for names, file in zip(shards, files) for n in names}}
    with open(os.path.join(folder, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return folder


if __name__ == "__main__":
  print("error: models.hf_export is a library; export a train.py run with: python export.py --workdir=DIR "
        "--out=FOLDER [--step=N] [--family=F]", file=sys.stderr)
  sys.exit(2)
