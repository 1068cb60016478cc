"""Import Hugging Face checkpoints from disk: LlamaForCausalLM (Touvron et al., arXiv 2302.13971; every
rope_scaling type transformers writes for it, Llama 3.1's "llama3" included), Qwen2ForCausalLM (q/k/v
biases), MistralForCausalLM (sliding window -> LOCAL layers) and ModernBertForMaskedLM (Warner et al.,
arXiv 2412.13663), from a folder with config.json and *.safetensors (sharded with an index or not).

No torch or transformers needed: safetensors is a JSON header plus raw little-endian arrays, read here
with NumPy (bfloat16 through ml_dtypes, which jax already depends on). Every config.json field is either
mapped, checked to have the one value we implement, or known not to change the forward pass; any other
field raises ValueError naming it. Every parameter of our model comes from exactly one slice of one
tensor of the right shape and every tensor is used (except the tied output embedding), else ValueError
names the tensor and both shapes. `tensor_map` is the one table of where each parameter lives; the
exporter (models/hf_export.py) runs it backwards.

  model, cfg = load_hf("path/to/ModernBERT-base")              # -> models.Encoder
  model, cfg = load_hf("path/to/llama", attention_impl="xla")  # -> models.DecoderLM
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from attention.rope import RopeScaling
from models import build_model
from models.config import AttentionType, ModelConfig

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
INDEX_FILE = "model.safetensors.index.json"
DYNAMIC_MAX_LEN = 1 << 20  # max_len of an imported dynamic-NTK model, which transformers does not bound

# Fields that do not change the forward pass (bookkeeping, token ids, init, caching, output flags).
_HARMLESS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "tokenizer_class", "_attn_implementation_autoset"})
# Per family: fields mapped onto ModelConfig, or checked for the one value implemented.
_LLAMA_CORE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "attention_dropout")
_FIELDS = {
    "llama": _LLAMA_CORE + ("attention_bias", "mlp_bias", "pretraining_tp"),
    "qwen2": _LLAMA_CORE + ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"),
    "mistral": _LLAMA_CORE + ("sliding_window",),
    "modernbert": (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "hidden_activation", "max_position_embeddings", "norm_eps", "norm_bias", "attention_bias", "mlp_bias",
        "decoder_bias", "tie_word_embeddings", "layer_types", "global_attn_every_n_layers", "local_attention",
        "rope_parameters", "global_rope_theta", "local_rope_theta", "attention_dropout", "embedding_dropout",
        "mlp_dropout", "classifier_dropout", "classifier_activation", "classifier_bias", "classifier_pooling",
        "cls_token_id", "sep_token_id", "sparse_prediction", "sparse_pred_ignore_index", "reference_compile",
        "repad_logits_with_grad", "deterministic_flash_attn", "initializer_cutoff_factor"),
}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                 "modernbert": "ModernBertForMaskedLM"}


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
  """(config.json as a dict, every tensor of the folder's safetensors files).

  With model.safetensors.index.json, exactly the files and tensors of its weight_map are read (a tensor
  it lists but no file holds raises ValueError); without it, every *.safetensors file.
  """
  cfg_path = os.path.join(folder, "config.json")
  if not os.path.isfile(cfg_path):
    raise ValueError(f"no config.json in {folder!r}")
  with open(cfg_path) as f:
    hf = json.load(f)
  index_path = os.path.join(folder, INDEX_FILE)
  weight_map = None
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  else:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise ValueError(f"no *.safetensors files in {folder!r}")
  tensors = {}
  for name in files:
    tensors.update(read_safetensors(os.path.join(folder, name)))
  if weight_map is not None:
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f"{index_path} lists tensors that no file holds: {missing[:5]}")
  return hf, tensors


def _require(hf: dict, key: str, allowed):
  value = hf.get(key, allowed[0])
  if value not in allowed:
    raise ValueError(f"config.json: {key}={value!r} is not supported (supported: {allowed})")


def _check_fields(hf: dict, family: str):
  unknown = sorted(set(hf) - _HARMLESS - set(_FIELDS[family]))
  if unknown:
    raise ValueError(f"config.json: field {unknown[0]}={hf[unknown[0]]!r} is not supported for model_type="
                     f"{family!r} (unsupported fields: {unknown})")
  for key in ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"):
    _require(hf, key, (0.0, 0))  # no dropout here: a fine-tune would silently differ


def _rope_params(hf: dict, layer_type: str | None = None) -> dict:
  """transformers >= 5 keeps RoPE settings in rope_parameters (per layer type for ModernBERT)."""
  params = hf.get("rope_parameters") or {}
  if layer_type is not None:
    params = params.get(layer_type) or {}
  return params


_ROPE_KEYS = {"default": (), "linear": ("factor",), "dynamic": ("factor", "original_max_position_embeddings"),
              "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                       "truncate", "mscale", "mscale_all_dim"),
              "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor")}


def _decoder_rope(hf: dict) -> tuple[float, RopeScaling, int]:
  """(theta, scaling, max_len) of a Llama-family config (legacy rope_theta/rope_scaling or rope_parameters).

  Dynamic NTK follows transformers: its L0 is max_position_embeddings (original_max_position_embeddings is
  not read), and the rule has no longest length, so max_len (only a bound: RoPE has no position table)
  becomes DYNAMIC_MAX_LEN.
  """
  rp = dict(hf.get("rope_scaling") or {}, **_rope_params(hf))
  theta = float(rp.pop("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = rp.pop("rope_type", None) or rp.pop("type", "default")
  rp.pop("type", None)
  if kind not in _ROPE_KEYS:
    raise ValueError(f"config.json: rope_type={kind!r} is not supported (supported: {sorted(_ROPE_KEYS)})")
  if rp.pop("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError(f"config.json: partial_rotary_factor={hf.get('partial_rotary_factor')!r} is not supported")
  extra = sorted(set(rp) - set(_ROPE_KEYS[kind]))
  if extra:
    raise ValueError(f"config.json: rope scaling field {extra[0]}={rp[extra[0]]!r} is not supported for "
                     f"rope_type={kind!r}")
  max_pos = int(hf.get("max_position_embeddings", 2048))
  l0 = int(rp.get("original_max_position_embeddings") or max_pos)
  factor = float(rp.get("factor") or 1.0)
  if kind == "default":
    return theta, RopeScaling(), max_pos
  if kind == "linear":
    return theta, RopeScaling("linear", factor), max_pos
  if kind == "dynamic":
    return theta, RopeScaling("dynamic_ntk", factor, original_max_len=max_pos), max(DYNAMIC_MAX_LEN, max_pos)
  if kind == "llama3":
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if rp.get(k) is None]
    if missing:
      raise ValueError(f"config.json: rope_type='llama3' needs {missing[0]} (got {rp})")
    return theta, RopeScaling("llama3", factor, original_max_len=l0, low_freq_factor=float(rp["low_freq_factor"]),
                              high_freq_factor=float(rp["high_freq_factor"])), max_pos
  if rp.get("factor") is None:  # yarn: transformers' rule for a missing factor
    factor = max_pos / l0
  temperature = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
  for key in ("mscale", "mscale_all_dim"):
    if rp.get(key):
      raise ValueError(f"config.json: yarn {key}={rp[key]!r} is not supported (DeepSeek's mscale variant)")
  if rp.get("attention_factor") is not None and not math.isclose(rp["attention_factor"], temperature):
    raise ValueError(f"config.json: yarn attention_factor={rp['attention_factor']!r} is not supported (only "
                     f"YaRN's 0.1 ln(factor) + 1 = {temperature})")
  if rp.get("truncate", True) is not True:
    raise ValueError(f"config.json: yarn truncate={rp['truncate']!r} is not supported")
  return theta, RopeScaling("yarn", factor, original_max_len=l0, beta_fast=float(rp.get("beta_fast") or 32),
                            beta_slow=float(rp.get("beta_slow") or 1)), max_pos


def _decoder_layers(hf: dict, family: str, layers: int) -> tuple[str, int]:
  """(attention pattern string, sliding window) of a Llama / Qwen2 / Mistral config."""
  if family == "mistral":
    w = hf.get("sliding_window")
    return ("L", w) if w else ("G", 0)
  if family == "llama":
    return "G", 0
  w = hf.get("sliding_window") if hf.get("use_sliding_window") else None
  types = hf.get("layer_types") or ["sliding_attention" if w and i >= hf.get("max_window_layers", 28)
                                    else "full_attention" for i in range(layers)]
  if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
    raise ValueError(f"config.json: layer_types={types!r} is not supported (num_hidden_layers={layers} entries "
                     "of full_attention/sliding_attention)")
  if "sliding_attention" in types and not w:
    raise ValueError(f"config.json: layer_types has sliding_attention but use_sliding_window="
                     f"{hf.get('use_sliding_window')!r}, sliding_window={hf.get('sliding_window')!r}")
  return "".join("L" if t == "sliding_attention" else "G" for t in types), w or 0


def _decoder_config(hf: dict, family: str) -> ModelConfig:
  _require(hf, "hidden_act", ("silu",))
  _require(hf, "pretraining_tp", (1,))
  heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
  theta, scaling, max_len = _decoder_rope(hf)
  pattern, w = _decoder_layers(hf, family, layers)
  if "L" in pattern and scaling.kind != "none":
    # transformers scales every layer's RoPE; our LOCAL layers never are (they never see past the window).
    raise ValueError(f"config.json: rope scaling {scaling.kind!r} together with sliding_window={w} is not "
                     "supported (LOCAL layers here keep unscaled RoPE)")
  return ModelConfig(
      arch="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=layers, num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_kind="swiglu", mlp_dim=hf["intermediate_size"], norm_kind="rms", norm_eps=hf.get("rms_norm_eps", 1e-6),
      attention_bias=hf.get("attention_bias", False), qkv_bias=family == "qwen2", mlp_bias=hf.get("mlp_bias", False),
      rope_theta=theta, rope_theta_local=theta, rope_scaling=scaling, attention_pattern=pattern,
      window=(max(w - 1, 0), 0), max_len=max_len,
      tie_embeddings=hf.get("tie_word_embeddings", False))


def _modernbert_config(hf: dict) -> ModelConfig:
  for key, allowed in (("hidden_activation", ("gelu",)), ("classifier_activation", ("gelu",)),
                       ("classifier_bias", (False,)), ("decoder_bias", (True,)), ("tie_word_embeddings", (True,))):
    _require(hf, key, allowed)
  for t in ("full_attention", "sliding_attention"):
    _require(_rope_params(hf, t), "rope_type", ("default",))
  layers, heads, half = hf["num_hidden_layers"], hf["num_attention_heads"], hf.get("local_attention", 128) // 2
  every = hf.get("global_attn_every_n_layers", 3)
  types = hf.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
  return ModelConfig(
      arch="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=layers, num_heads=heads,
      num_kv_heads=heads, head_dim=hf["hidden_size"] // heads, mlp_kind="geglu", mlp_dim=hf["intermediate_size"],
      norm_kind="layer", norm_eps=hf.get("norm_eps", 1e-5), norm_bias=hf.get("norm_bias", False),
      attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
      rope_theta=float(_rope_params(hf, "full_attention").get("rope_theta", hf.get("global_rope_theta", 160000.0))),
      rope_theta_local=float(_rope_params(hf, "sliding_attention").get("rope_theta",
                                                                     hf.get("local_rope_theta", 10000.0))),
      attention_pattern="".join("G" if t == "full_attention" else "L" for t in types), window=(half, half),
      max_len=hf.get("max_position_embeddings", 8192), tie_embeddings=True)


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """ModelConfig of a Hugging Face config.json dict; overrides as in ModelConfig.replace.

  Raises ValueError naming the first config.json field (or RoPE field) that is not supported.
  """
  family = hf.get("model_type")
  if family not in _FIELDS:
    raise ValueError(f"config.json: model_type={family!r} is not supported (supported: {sorted(_FIELDS)})")
  _check_fields(hf, family)
  cfg = _modernbert_config(hf) if family == "modernbert" else _decoder_config(hf, family)
  return cfg.replace(**overrides) if overrides else cfg


@dataclasses.dataclass(frozen=True)
class Part:
  """One of our parameters inside a Hugging Face tensor.

  kind "copy": the same array (embeddings, norms, 1-D biases); "flat": our [M, H] is the tensor's [M * H];
  "linear": a torch Linear weight [out, in] whose transpose is our kernel in_shape + out_shape (n_in axes
  of input). rows (start, stop) selects the tensor's rows holding this parameter (fused Wqkv, Wi).
  """

  key: str
  kind: str = "copy"
  rows: tuple[int, int] | None = None
  n_in: int = 1

  def to_ours(self, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The slice of `tensor` for this parameter, laid out as our `shape` (ValueError if it cannot be)."""
    t = np.asarray(tensor)
    t = t if self.rows is None else t[self.rows[0]:self.rows[1]]
    size = lambda dims: int(np.prod(dims, dtype=np.int64))
    want = {"copy": shape, "flat": (size(shape),),
            "linear": (size(shape[self.n_in:]), size(shape[:self.n_in]))}[self.kind]
    if tuple(t.shape) != tuple(want):
      raise ValueError(f"has shape {tuple(np.shape(tensor))}, which gives {tuple(t.shape)}")
    return (t.T if self.kind == "linear" else t).reshape(shape)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """Our parameter as this part's rows of the Hugging Face tensor (inverse of to_ours)."""
    v = np.asarray(value)
    if self.kind == "linear":
      return v.reshape(int(np.prod(v.shape[:self.n_in])), -1).T
    return v.reshape(-1) if self.kind == "flat" else v


def _attention_map(cfg: ModelConfig, us: str, qkv: dict[str, str], out: str, fused: bool) -> dict[str, list[Part]]:
  """q/k/v/o of one layer; qkv maps q/k/v to tensor name prefixes (one shared name when fused)."""
  n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  rows = {"q": (0, n * h), "k": (n * h, (n + k) * h), "v": ((n + k) * h, (n + 2 * k) * h)}
  m = {}
  for p, name in qkv.items():
    r = rows[p] if fused else None
    m.setdefault(f"{name}.weight", []).append(Part(f"{us}.attn.{p}.kernel", "linear", r))
    if cfg.attention_bias or cfg.qkv_bias:
      m.setdefault(f"{name}.bias", []).append(Part(f"{us}.attn.{p}.bias", "flat", r))
  m[f"{out}.weight"] = [Part(f"{us}.attn.o.kernel", "linear", n_in=2)]
  if cfg.attention_bias:
    m[f"{out}.bias"] = [Part(f"{us}.attn.o.bias")]
  return m


def _decoder_map(cfg: ModelConfig) -> dict[str, list[Part]]:
  m = {"model.embed_tokens.weight": [Part("embed.embedding")], "model.norm.weight": [Part("final_norm.scale")]}
  if not cfg.tie_embeddings:
    m["lm_head.weight"] = [Part("lm_head.kernel", "linear")]
  for i in range(cfg.num_layers):
    hf, us = f"model.layers.{i}", f"blocks.{i}"
    m.update(_attention_map(cfg, us, {p: f"{hf}.self_attn.{p}_proj" for p in "qkv"}, f"{hf}.self_attn.o_proj",
                            fused=False))
    m[f"{hf}.input_layernorm.weight"] = [Part(f"{us}.attn_norm.scale")]
    m[f"{hf}.post_attention_layernorm.weight"] = [Part(f"{us}.mlp_norm.scale")]
    for ours, theirs in (("wi", "gate_proj"), ("wg", "up_proj"), ("wo", "down_proj")):  # silu(gate) * up
      m[f"{hf}.mlp.{theirs}.weight"] = [Part(f"{us}.mlp.{ours}.kernel", "linear")]
      if cfg.mlp_bias:
        m[f"{hf}.mlp.{theirs}.bias"] = [Part(f"{us}.mlp.{ours}.bias")]
  return m


def _modernbert_map(cfg: ModelConfig) -> dict[str, list[Part]]:
  f = cfg.mlp_dim

  def norm(us, hf):
    out = {f"{hf}.weight": [Part(f"{us}.scale")]}
    if cfg.norm_bias:
      out[f"{hf}.bias"] = [Part(f"{us}.bias")]
    return out

  m = {"model.embeddings.tok_embeddings.weight": [Part("embed.embedding")],
       "head.dense.weight": [Part("head_dense.kernel", "linear")], "decoder.bias": [Part("decoder_bias")]}
  m.update(norm("embed_norm", "model.embeddings.norm"))
  m.update(norm("final_norm", "model.final_norm"))
  m.update(norm("head_norm", "head.norm"))
  for i in range(cfg.num_layers):
    hf, us = f"model.layers.{i}", f"blocks.{i}"
    # Wqkv rows are [q; k; v], each N * H (HF views the output as [3, N, H]).
    m.update(_attention_map(cfg, us, {p: f"{hf}.attn.Wqkv" for p in "qkv"}, f"{hf}.attn.Wo", fused=True))
    if i > 0:
      m.update(norm(f"{us}.attn_norm", f"{hf}.attn_norm"))
    m.update(norm(f"{us}.mlp_norm", f"{hf}.mlp_norm"))
    # GeGLU: Wi's rows are [input; gate], gelu(input) * gate.
    m[f"{hf}.mlp.Wi.weight"] = [Part(f"{us}.mlp.wi.kernel", "linear", (0, f)),
                                Part(f"{us}.mlp.wg.kernel", "linear", (f, 2 * f))]
    m[f"{hf}.mlp.Wo.weight"] = [Part(f"{us}.mlp.wo.kernel", "linear")]
    if cfg.mlp_bias:
      m[f"{hf}.mlp.Wi.bias"] = [Part(f"{us}.mlp.wi.bias", rows=(0, f)), Part(f"{us}.mlp.wg.bias", rows=(f, 2 * f))]
      m[f"{hf}.mlp.Wo.bias"] = [Part(f"{us}.mlp.wo.bias")]
  return m


def tensor_map(cfg: ModelConfig) -> tuple[dict[str, list[Part]], set[str]]:
  """({Hugging Face tensor name: the Parts of our parameters it holds}, tensor names that may be present
  but are not read: the output embedding of a tied model)."""
  if cfg.arch == "encoder":
    return _modernbert_map(cfg), {"decoder.weight"}
  if AttentionType.DSA in cfg.attention_pattern:
    raise ValueError("DSA layers have no Hugging Face Llama/Qwen2/Mistral counterpart (attention_pattern="
                     f"{cfg.pattern_string()!r})")
  return _decoder_map(cfg), ({"lm_head.weight"} if cfg.tie_embeddings else set())


def convert(cfg: ModelConfig, tensors: dict[str, np.ndarray]):
  """Our model for cfg with every parameter taken from the Hugging Face tensors (ValueError if any is
  missing, has the wrong shape, or is left over)."""
  table, ignorable = tensor_map(cfg)
  parts = {p.key: (name, p) for name, ps in table.items() for p in ps}
  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat, used = [], set()
  for path, var in nnx.to_flat_state(state):
    key = ".".join(str(p) for p in path)
    if key not in parts:
      raise ValueError(f"no Hugging Face tensor is mapped to parameter {key} {var.shape}")
    name, part = parts[key]
    if name not in tensors:
      raise ValueError(f"missing tensor {name!r} (needed for parameter {key} {var.shape})")
    try:
      value = part.to_ours(tensors[name], tuple(var.shape))
    except ValueError as e:
      raise ValueError(f"tensor {name!r} {e} but parameter {key} needs {tuple(var.shape)}") from None
    used.add(name)
    flat.append((path, var.replace(jnp.asarray(value.astype(np.float32), var.dtype))))
  unused = sorted(set(tensors) - used - ignorable)
  if unused:
    raise ValueError(f"tensors not used by the {cfg.arch} model: {unused[:10]}{' ...' if len(unused) > 10 else ''}")
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_hf(folder: str, **overrides):
  """(model, cfg) from a Hugging Face folder (config.json + *.safetensors).

  Args:
    folder: a saved LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM or ModernBertForMaskedLM
      (save_pretrained output, or save_hf's).
    **overrides: ModelConfig fields to change, e.g. attention_impl="xla", param_dtype="bfloat16",
      max_len=32768 (with rope_scaling to extend a Llama).
  """
  hf, tensors = load_folder(folder)
  cfg = config_from_hf(hf, **overrides)
  return convert(cfg, tensors), cfg


def load_params(folder: str) -> dict:
  """The parameters of a Hugging Face folder as a pure dict of float32 NumPy arrays (nnx.to_pure_dict's
  layout), for a trainer that builds its own model (init_from)."""
  model, _ = load_hf(folder)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def attention_mask_to_segment_ids(attention_mask):
  """Hugging Face attention_mask [B, T] (1 real, 0 pad) -> segment ids: padding becomes its own segment 0,
  so real tokens never see it (their logits match Hugging Face's; the padding's logits are meaningless)."""
  return jnp.asarray(attention_mask, jnp.int32)
