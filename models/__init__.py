"""Flax NNX models: a ModernBERT-style encoder and a Llama-style decoder LM over the attention package.

  from models import ModelConfig, build_model, presets, generate
  cfg = presets.get("decoder_tiny").replace(attention_pattern="LLG")
  model = build_model(cfg, rngs=nnx.Rngs(0))
  logits, aux = model(tokens, return_aux=True)  # aux: losses to add to the objective, e.g. indexer_kl
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from models import presets
from models.attention import is_indexer_param
from models.config import AttentionType, ModelConfig, parse_pattern
from models.decoder import DecoderLM
from models.encoder import Encoder
from models.generate import generate

LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "indexer")


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs):
  """A DecoderLM (cfg.arch == "decoder") or an Encoder (cfg.arch == "encoder")."""
  if not isinstance(cfg, ModelConfig):
    raise ValueError(f"cfg must be a models.ModelConfig, got {type(cfg).__name__}")
  return DecoderLM(cfg, rngs=rngs) if cfg.arch == "decoder" else Encoder(cfg, rngs=rngs)


def logical_axis_names(model) -> nnx.State:
  """nnx.State with, for every nnx.Param, the tuple of its logical axis names (one per dim, None allowed).

  Equivalent flax call: nnx.get_partition_spec(nnx.state(model, nnx.Param)) (PartitionSpecs instead of
  tuples); under nnx.logical_axis_rules(rules) that call maps the names onto mesh axes.
  """
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  return jax.tree.map(lambda spec: tuple(spec), specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_count(cfg: ModelConfig) -> int:
  """Number of parameters, from shapes only (nnx.eval_shape: nothing is allocated)."""
  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def _mean_visible(seq_len: int, left: int | None, right: int | None) -> float:
  """Average number of keys a query sees with `left`/`right` keys allowed on each side (None: unlimited)."""
  i = np.arange(seq_len, dtype=np.float64)
  before = i if left is None else np.minimum(i, left)
  after = (seq_len - 1 - i) if right is None else np.minimum(seq_len - 1 - i, right)
  return float(np.mean(before + after + 1))


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward matmul FLOPs of attention per token at sequence length seq_len, summed over the layers.

  Counts QK^T and PV (4 * N * H per visible key): a causal global layer sees (L + 1) / 2 keys on average,
  a bidirectional one L, a local layer its window, a DSA layer min(dsa_local_keys + top_k, visible) keys plus
  the indexer (2 * Hi * (Di + 1) per causal key: q.k for every indexer head and the weighted ReLU sum).
  Projections are not included (they are the usual 2 * params). Training costs about 3x this (forward +
  backward).
  """
  if not isinstance(seq_len, int) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
  per_key = 4 * cfg.num_heads * cfg.head_dim
  right = 0 if cfg.causal else None
  dense = _mean_visible(seq_len, None, right)
  total = 0.0
  for t in cfg.attention_pattern:
    if t is AttentionType.GLOBAL:
      total += per_key * dense
    elif t is AttentionType.LOCAL:
      total += per_key * _mean_visible(seq_len, cfg.window[0], 0 if cfg.causal else cfg.window[1])
    else:
      keys = dense if cfg.dsa_phase == "dense_warmup" else float(
          np.mean(np.minimum(np.arange(1, seq_len + 1), cfg.dsa_top_k + cfg.dsa_local_keys)))
      total += per_key * keys + 2 * cfg.dsa_index_heads * (cfg.dsa_index_dim + 1) * dense
  return total


__all__ = ["AttentionType", "DecoderLM", "Encoder", "LOGICAL_AXES", "ModelConfig", "attention_flops_per_token",
           "build_model", "generate", "is_indexer_param", "logical_axis_names", "param_count", "parse_pattern",
           "presets"]
