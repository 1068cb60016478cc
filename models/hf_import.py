"""Import Hugging Face checkpoints from disk: ModernBertForMaskedLM (Warner et al., arXiv 2412.13663) and
LlamaForCausalLM (Touvron et al., arXiv 2302.13971), from a folder with config.json and *.safetensors.

No torch or transformers needed: safetensors is a JSON header plus raw little-endian arrays, read here
with NumPy (bfloat16 through ml_dtypes, which jax already depends on). Every parameter of our model must
come from exactly one tensor of the right shape and every tensor must be used (except the tied output
embedding), else ValueError names the tensor and both shapes.

  model, cfg = load_hf("path/to/ModernBERT-base")              # -> models.Encoder
  model, cfg = load_hf("path/to/llama", attention_impl="xla")  # -> models.DecoderLM
"""

from __future__ import annotations

import json
import os
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from attention.rope import RopeScaling
from models import build_model
from models.config import ModelConfig

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as NumPy arrays (memory-mapped)."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    out[name] = data[begin:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def load_folder(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json as a dict, every tensor of every *.safetensors file in the folder)."""
  cfg_path = os.path.join(folder, "config.json")
  if not os.path.isfile(cfg_path):
    raise ValueError(f"no config.json in {folder!r}")
  files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise ValueError(f"no *.safetensors files in {folder!r}")
  with open(cfg_path) as f:
    hf = json.load(f)
  tensors = {}
  for name in files:
    tensors.update(read_safetensors(os.path.join(folder, name)))
  return hf, tensors


def _require(hf: dict, key: str, allowed):
  value = hf.get(key, allowed[0])
  if value not in allowed:
    raise ValueError(f"config.json: {key}={value!r} is not supported (supported: {allowed})")


def _rope_params(hf: dict, layer_type: str | None = None) -> dict:
  """transformers >= 5 keeps RoPE settings in rope_parameters (per layer type for ModernBERT)."""
  params = hf.get("rope_parameters") or {}
  if layer_type is not None:
    params = params.get(layer_type) or {}
  return params


def _llama_scaling(hf: dict) -> tuple[float, RopeScaling]:
  rp = dict(hf.get("rope_scaling") or {}, **_rope_params(hf))
  theta = float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = rp.get("rope_type", rp.get("type", "default"))
  factor = float(rp.get("factor", 1.0))
  l0 = rp.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
  if kind == "default":
    return theta, RopeScaling()
  if kind == "linear":
    return theta, RopeScaling("linear", factor)
  if kind == "dynamic":
    return theta, RopeScaling("dynamic_ntk", factor, original_max_len=int(l0))
  if kind == "yarn" and rp.get("attention_factor") is None and not rp.get("mscale"):
    return theta, RopeScaling("yarn", factor, original_max_len=int(l0), beta_fast=float(rp.get("beta_fast", 32)),
                              beta_slow=float(rp.get("beta_slow", 1)))
  raise ValueError(f"config.json: rope scaling {rp!r} is not supported (default, linear, dynamic, yarn)")


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig of a Hugging Face ModernBERT or Llama config.json dict; overrides as in ModelConfig.replace."""
  kind = hf.get("model_type")
  if kind == "llama":
    _require(hf, "hidden_act", ("silu",))
    heads = hf["num_attention_heads"]
    theta, scaling = _llama_scaling(hf)
    cfg = ModelConfig(
        arch="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_kind="swiglu", mlp_dim=hf["intermediate_size"],
        norm_kind="rms", norm_eps=hf.get("rms_norm_eps", 1e-6), attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False), rope_theta=theta, rope_scaling=scaling, attention_pattern="G",
        max_len=hf.get("max_position_embeddings", 2048), tie_embeddings=hf.get("tie_word_embeddings", False))
  elif kind == "modernbert":
    for key, allowed in (("hidden_activation", ("gelu",)), ("classifier_activation", ("gelu",)),
                         ("classifier_bias", (False,)), ("decoder_bias", (True,)),
                         ("tie_word_embeddings", (True,))):
      _require(hf, key, allowed)
    for t in ("full_attention", "sliding_attention"):
      _require(_rope_params(hf, t), "rope_type", ("default",))
    layers, heads, half = hf["num_hidden_layers"], hf["num_attention_heads"], hf.get("local_attention", 128) // 2
    every = hf.get("global_attn_every_n_layers", 3)
    types = hf.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    cfg = ModelConfig(
        arch="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=layers, num_heads=heads,
        num_kv_heads=heads, head_dim=hf["hidden_size"] // heads, mlp_kind="geglu", mlp_dim=hf["intermediate_size"],
        norm_kind="layer", norm_eps=hf.get("norm_eps", 1e-5), norm_bias=hf.get("norm_bias", False),
        attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
        rope_theta=float(_rope_params(hf, "full_attention").get("rope_theta", hf.get("global_rope_theta", 160000.0))),
        rope_theta_local=float(_rope_params(hf, "sliding_attention").get("rope_theta",
                                                                       hf.get("local_rope_theta", 10000.0))),
        attention_pattern="".join("G" if t == "full_attention" else "L" for t in types), window=(half, half),
        max_len=hf.get("max_position_embeddings", 8192), tie_embeddings=True)
  else:
    raise ValueError(f"config.json: model_type={kind!r} is not supported (supported: 'llama', 'modernbert')")
  return cfg.replace(**overrides) if overrides else cfg


def _linear(w, in_shape=None, out_shape=None):
  """torch Linear weight [out, in] -> our kernel in_shape + out_shape."""
  w = np.asarray(w).T
  return w.reshape(tuple(in_shape or w.shape[:1]) + tuple(out_shape or w.shape[1:]))


def _attention_sources(cfg: ModelConfig, a: str, qkv: dict[str, str], out: str, biases: dict[str, str] | None):
  """Sources of one attention block's parameters; qkv maps q/k/v to (tensor name, row slice)."""
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  heads = {"q": n, "k": k, "v": k}
  src = {}
  for p, (name, rows) in qkv.items():
    src[f"{a}.{p}.kernel"] = (name, lambda w, rows=rows, m=heads[p]: _linear(w[rows], (d,), (m, h)))
    if biases:
      src[f"{a}.{p}.bias"] = (biases[p][0], lambda b, rows=biases[p][1], m=heads[p]: np.asarray(b[rows]).reshape(m, h))
  src[f"{a}.o.kernel"] = (out + ".weight", lambda w: _linear(w, (n, h), (d,)))
  if biases:
    src[f"{a}.o.bias"] = (out + ".bias", np.asarray)
  return src


def _llama_sources(cfg: ModelConfig) -> tuple[dict, set[str]]:
  same = np.asarray
  src = {"embed.embedding": ("model.embed_tokens.weight", same), "final_norm.scale": ("model.norm.weight", same)}
  if not cfg.tie_embeddings:
    src["lm_head.kernel"] = ("lm_head.weight", _linear)
  for i in range(cfg.num_layers):
    hf, us = f"model.layers.{i}", f"blocks.{i}"
    qkv = {p: (f"{hf}.self_attn.{p}_proj.weight", slice(None)) for p in "qkv"}
    biases = {p: (f"{hf}.self_attn.{p}_proj.bias", slice(None)) for p in "qkv"} if cfg.attention_bias else None
    src.update(_attention_sources(cfg, f"{us}.attn", qkv, f"{hf}.self_attn.o_proj", biases))
    src[f"{us}.attn_norm.scale"] = (f"{hf}.input_layernorm.weight", same)
    src[f"{us}.mlp_norm.scale"] = (f"{hf}.post_attention_layernorm.weight", same)
    for ours, theirs in (("wi", "gate_proj"), ("wg", "up_proj"), ("wo", "down_proj")):  # silu(gate) * up
      src[f"{us}.mlp.{ours}.kernel"] = (f"{hf}.mlp.{theirs}.weight", _linear)
      if cfg.mlp_bias:
        src[f"{us}.mlp.{ours}.bias"] = (f"{hf}.mlp.{theirs}.bias", same)
  return src, ({"lm_head.weight"} if cfg.tie_embeddings else set())


def _modernbert_sources(cfg: ModelConfig) -> tuple[dict, set[str]]:
  same, d, f = np.asarray, cfg.d_model, cfg.mlp_dim

  def norm(us, hf):
    out = {f"{us}.scale": (f"{hf}.weight", same)}
    if cfg.norm_bias:
      out[f"{us}.bias"] = (f"{hf}.bias", same)
    return out

  src = {"embed.embedding": ("model.embeddings.tok_embeddings.weight", same),
         "head_dense.kernel": ("head.dense.weight", _linear), "decoder_bias": ("decoder.bias", same)}
  src.update(norm("embed_norm", "model.embeddings.norm"))
  src.update(norm("final_norm", "model.final_norm"))
  src.update(norm("head_norm", "head.norm"))
  for i in range(cfg.num_layers):
    hf, us = f"model.layers.{i}", f"blocks.{i}"
    # Wqkv rows are [q; k; v], each N * H (HF views the output as [3, N, H]).
    qkv = {p: (f"{hf}.attn.Wqkv.weight", slice(j * d, (j + 1) * d)) for j, p in enumerate("qkv")}
    biases = ({p: (f"{hf}.attn.Wqkv.bias", slice(j * d, (j + 1) * d)) for j, p in enumerate("qkv")}
              if cfg.attention_bias else None)
    src.update(_attention_sources(cfg, f"{us}.attn", qkv, f"{hf}.attn.Wo", biases))
    if i > 0:
      src.update(norm(f"{us}.attn_norm", f"{hf}.attn_norm"))
    src.update(norm(f"{us}.mlp_norm", f"{hf}.mlp_norm"))
    # GeGLU: Wi's rows are [input; gate], gelu(input) * gate.
    src[f"{us}.mlp.wi.kernel"] = (f"{hf}.mlp.Wi.weight", lambda w: _linear(w[:f]))
    src[f"{us}.mlp.wg.kernel"] = (f"{hf}.mlp.Wi.weight", lambda w: _linear(w[f:]))
    src[f"{us}.mlp.wo.kernel"] = (f"{hf}.mlp.Wo.weight", _linear)
    if cfg.mlp_bias:
      src[f"{us}.mlp.wi.bias"] = (f"{hf}.mlp.Wi.bias", lambda b: np.asarray(b[:f]))
      src[f"{us}.mlp.wg.bias"] = (f"{hf}.mlp.Wi.bias", lambda b: np.asarray(b[f:]))
      src[f"{us}.mlp.wo.bias"] = (f"{hf}.mlp.Wo.bias", same)
  return src, {"decoder.weight"}


def convert(cfg: ModelConfig, tensors: dict[str, np.ndarray]):
  """Our model for cfg with every parameter taken from the Hugging Face tensors (ValueError if any is
  missing, has the wrong shape, or is left over)."""
  sources, ignorable = (_llama_sources if cfg.arch == "decoder" else _modernbert_sources)(cfg)
  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat, used = [], set()
  for path, var in nnx.to_flat_state(state):
    key = ".".join(str(p) for p in path)
    if key not in sources:
      raise ValueError(f"no Hugging Face tensor is mapped to parameter {key} {var.shape}")
    name, transform = sources[key]
    if name not in tensors:
      raise ValueError(f"missing tensor {name!r} (needed for parameter {key} {var.shape})")
    value = transform(tensors[name])
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, which gives {tuple(value.shape)} "
                       f"but parameter {key} needs {tuple(var.shape)}")
    used.add(name)
    flat.append((path, var.replace(jnp.asarray(value.astype(np.float32), var.dtype))))
  unused = sorted(set(tensors) - used - ignorable)
  if unused:
    raise ValueError(f"tensors not used by the {cfg.arch} model: {unused[:10]}{' ...' if len(unused) > 10 else ''}")
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_hf(folder: str, **overrides):
  """(model, cfg) from a Hugging Face folder (config.json + *.safetensors).

  Args:
    folder: a saved ModernBertForMaskedLM or LlamaForCausalLM (save_pretrained output).
    **overrides: ModelConfig fields to change, e.g. attention_impl="xla", param_dtype="bfloat16",
      max_len=32768 (with rope_scaling to extend a Llama).
  """
  hf, tensors = load_folder(folder)
  cfg = config_from_hf(hf, **overrides)
  return convert(cfg, tensors), cfg


def attention_mask_to_segment_ids(attention_mask):
  """Hugging Face attention_mask [B, T] (1 real, 0 pad) -> segment ids: padding becomes its own segment 0,
  so real tokens never see it (their logits match Hugging Face's; the padding's logits are meaningless)."""
  return jnp.asarray(attention_mask, jnp.int32)
