"""The model configuration: one frozen, validated dataclass for the encoder and the decoder LM.

The ConfigDict of an experiment is turned once into a ModelConfig (Flax examples style); the model never
reads flags. The per-layer attention is a tuple of AttentionType built from a pattern string tiled over
the layers: "GLL" is ModernBERT (Warner et al., arXiv 2412.13663: global every third layer), "LLLLLG" is a
Gemma-style decoder, "D" is all DeepSeek Sparse Attention (DeepSeek-V3.2-Exp).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from attention.rope import RopeScaling


class AttentionType(enum.Enum):
  """What a layer computes: full attention, a sliding window, or DSA over the indexer's top-k keys."""

  GLOBAL = "G"
  LOCAL = "L"
  DSA = "D"


def parse_pattern(pattern, num_layers: int) -> tuple[AttentionType, ...]:
  """"GLL" (tiled over num_layers) or a sequence of AttentionType/letters -> tuple of num_layers types."""
  if isinstance(pattern, str):
    if not pattern or any(c not in "GLD" for c in pattern):
      raise ValueError(f"attention_pattern must be a non-empty string of G/L/D, got {pattern!r}")
    return tuple(AttentionType(pattern[i % len(pattern)]) for i in range(num_layers))
  types = tuple(p if isinstance(p, AttentionType) else AttentionType(p) for p in pattern)
  if len(types) != num_layers:
    raise ValueError(f"attention_pattern has {len(types)} entries but num_layers={num_layers}")
  return types


_DTYPES = ("float32", "bfloat16")
# Activation rematerialisation per block (MaxText's remat_policy): "none" keeps every activation for the
# backward pass, "full" keeps only each block's input and recomputes the rest, "dots" also keeps the
# outputs of the projection/MLP matmuls (jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
# "attention_out" keeps each layer's attention output so the backward pass does not rerun attention.
REMAT_POLICIES = ("none", "full", "dots", "attention_out")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a model's parameters and computation.

  arch "decoder": causal LM with RMSNorm and SwiGLU (Llama-compatible); "encoder": ModernBERT-style
  bidirectional MLM with LayerNorm and GeGLU. `window` is (left, right) as in attention.Mask; decoders
  use the causal part only (right is ignored). RoPE scaling applies to GLOBAL and DSA layers: a LOCAL layer
  never sees a distance beyond its window, so it needs no extension.
  """

  arch: str = "decoder"
  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 16
  mlp_kind: str = "swiglu"  # "swiglu" (silu gate) | "geglu" (exact gelu gate)
  mlp_dim: int = 128
  norm_kind: str = "rms"  # "rms" | "layer"
  norm_eps: float = 1e-6
  norm_bias: bool = False
  attention_bias: bool = False  # biases on q, k, v and the output projection (ModernBERT's option)
  qkv_bias: bool = False  # biases on q, k, v only (Qwen2); implied by attention_bias
  mlp_bias: bool = False
  rope_theta: float = 10000.0  # GLOBAL and DSA layers
  rope_theta_local: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()
  attention_pattern: tuple[AttentionType, ...] | str = "G"
  window: tuple[int, int] = (128, 0)
  dsa_index_heads: int = 4
  dsa_index_dim: int = 32
  dsa_rope_dim: int = 16  # partial RoPE on the first dims of the indexer q/k
  dsa_top_k: int = 2048
  dsa_smeared_keys: bool = False  # smear the indexer's keys as smeared_keys does the attention's
  dsa_local_keys: int = 0  # W > 0: each query also attends to its W most recent keys (topk_indices' local_keys)
  dsa_phase: str = "sparse"  # "dense_warmup" | "sparse"
  dsa_score_dtype: str = "bfloat16"  # precision of the indexer's q.k products: "bfloat16" | "float32"
  max_len: int = 2048
  param_dtype: str = "float32"
  dtype: str = "float32"
  tie_embeddings: bool = True
  attention_impl: str = "auto"
  init_std: float = 0.02
  remat: str = "none"  # one of REMAT_POLICIES
  # Smeared keys (Olsson et al. 2022, "In-context Learning and Induction Heads", sec. "smeared keys"): each
  # attention layer's key at t is sigmoid(a) k_t + (1 - sigmoid(a)) k_{t-1}, a learned per kv head, so one
  # layer can match "the token before this key" without a previous-token head in an earlier layer.
  smeared_keys: bool = False
  # Log-n attention (Qwen's logn_attn; Nakanishi 2025, "Scalable-Softmax", arXiv 2501.19399): 0 is off; L > 1
  # multiplies a GLOBAL layer's logits at query position p (p + 1 keys visible, positions counted from each
  # document's start) by max(1, log(p + 1) / log(L)), so that past L the softmax over more keys stays as
  # peaked as it was over L: without it the weight a query puts on one matching key falls as the number of
  # keys grows. LOCAL layers (at most their window) and DSA layers (at most top_k keys) are left alone.
  logn_attention: int = 0

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    if self.arch not in ("decoder", "encoder"):
      raise ValueError(f"arch must be 'decoder' or 'encoder', got {self.arch!r}")
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                 "dsa_index_heads", "dsa_index_dim", "dsa_top_k", "max_len"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
    if self.mlp_kind not in ("swiglu", "geglu"):
      raise ValueError(f"mlp_kind must be 'swiglu' or 'geglu', got {self.mlp_kind!r}")
    if self.norm_kind not in ("rms", "layer"):
      raise ValueError(f"norm_kind must be 'rms' or 'layer', got {self.norm_kind!r}")
    if not self.norm_eps > 0:
      raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
    for name in ("rope_theta", "rope_theta_local"):
      if not getattr(self, name) > 1:
        raise ValueError(f"{name} must be > 1, got {getattr(self, name)!r}")
    if isinstance(self.rope_scaling, dict):
      set_("rope_scaling", RopeScaling(**self.rope_scaling))
    if not isinstance(self.rope_scaling, RopeScaling):
      raise ValueError(f"rope_scaling must be an attention.rope.RopeScaling, got {self.rope_scaling!r}")
    set_("attention_pattern", parse_pattern(self.attention_pattern, self.num_layers))
    w = tuple(self.window)
    if len(w) != 2 or any(not isinstance(x, int) or x < 0 for x in w):
      raise ValueError(f"window must be a pair of ints >= 0 (left, right), got {self.window!r}")
    set_("window", w)
    if not 0 <= self.dsa_rope_dim <= self.dsa_index_dim or self.dsa_rope_dim % 2:
      raise ValueError(f"dsa_rope_dim must be even and in [0, dsa_index_dim={self.dsa_index_dim}], got "
                       f"{self.dsa_rope_dim!r}")
    if isinstance(self.dsa_local_keys, bool) or not isinstance(self.dsa_local_keys, int) or self.dsa_local_keys < 0:
      raise ValueError(f"dsa_local_keys must be an int >= 0, got {self.dsa_local_keys!r}")
    if self.dsa_phase not in ("dense_warmup", "sparse"):
      raise ValueError(f"dsa_phase must be 'dense_warmup' or 'sparse', got {self.dsa_phase!r}")
    if self.dsa_score_dtype not in _DTYPES:
      raise ValueError(f"dsa_score_dtype must be one of {_DTYPES}, got {self.dsa_score_dtype!r}")
    if self.arch == "encoder" and AttentionType.DSA in self.attention_pattern:
      raise ValueError("DSA layers need a causal decoder; arch='encoder' got a 'D' in attention_pattern")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if not isinstance(self.smeared_keys, bool):
      raise ValueError(f"smeared_keys must be a bool, got {self.smeared_keys!r}")
    if not isinstance(self.logn_attention, int) or isinstance(self.logn_attention, bool) or self.logn_attention < 0 \
        or self.logn_attention == 1:
      raise ValueError(f"logn_attention must be 0 (off) or an int length > 1, got {self.logn_attention!r}")
    if not isinstance(self.attention_impl, str):
      raise ValueError(f"attention_impl must be a string, got {self.attention_impl!r}")

  @property
  def causal(self) -> bool:
    return self.arch == "decoder"

  def pattern_string(self) -> str:
    """The shortest string whose tiling gives attention_pattern, e.g. "GLL" for ModernBERT."""
    letters = "".join(t.value for t in self.attention_pattern)
    period = next(p for p in range(1, len(letters) + 1)
                  if all(letters[i] == letters[i % p] for i in range(len(letters))))
    return letters[:period]

  def replace(self, **overrides) -> "ModelConfig":
    """A copy with fields replaced (validated again); unknown names raise ValueError.

    Changing num_layers alone re-tiles the current pattern (its shortest period) over the new depth.
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    if "num_layers" in overrides and "attention_pattern" not in overrides:
      overrides["attention_pattern"] = self.pattern_string()
    return dataclasses.replace(self, **overrides)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable dict (the pattern as a string, rope_scaling as a dict); inverse of from_dict."""
    d = dataclasses.asdict(self)
    d["attention_pattern"] = "".join(t.value for t in self.attention_pattern)  # one letter per layer
    d["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
    d["window"] = list(self.window)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    """Build from to_dict()'s output (or any dict of field names); unknown keys raise ValueError."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    d = dict(d)
    if isinstance(d.get("rope_scaling"), dict):
      d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    if "window" in d:
      d["window"] = tuple(d["window"])
    return cls(**d)
