"""Named model configurations: tiny ones for CPU tests and smoke runs, and the published sizes.

ModernBERT base / large follow the Hugging Face configs of answerdotai/ModernBERT-{base,large}
(149M / 395M parameters). decoder_125m is GPT-2-small-sized, decoder_1b is Llama-3.2-1B-shaped (GQA 32/8).
"""

from __future__ import annotations

from models.config import ModelConfig

_MODERNBERT = dict(arch="encoder", vocab_size=50368, mlp_kind="geglu", norm_kind="layer", norm_eps=1e-5,
                   rope_theta=160000.0, rope_theta_local=10000.0, attention_pattern="GLL", window=(64, 64),
                   max_len=8192, tie_embeddings=True)

_PRESETS = {
    "decoder_tiny": ModelConfig(arch="decoder", vocab_size=256, d_model=64, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=16, mlp_dim=128, max_len=1024, window=(32, 0)),
    "decoder_125m": ModelConfig(arch="decoder", vocab_size=50304, d_model=768, num_layers=12, num_heads=12,
                                num_kv_heads=12, head_dim=64, mlp_dim=2048, max_len=2048, norm_eps=1e-5),
    "decoder_1b": ModelConfig(arch="decoder", vocab_size=32000, d_model=2048, num_layers=16, num_heads=32,
                              num_kv_heads=8, head_dim=64, mlp_dim=8192, max_len=4096, norm_eps=1e-5,
                              rope_theta=500000.0),
    "encoder_tiny": ModelConfig(**dict(_MODERNBERT, vocab_size=256, d_model=64, num_layers=3, num_heads=4,
                                       num_kv_heads=4, head_dim=16, mlp_dim=96, window=(16, 16), max_len=1024)),
    "modernbert_base": ModelConfig(**_MODERNBERT, d_model=768, num_layers=22, num_heads=12, num_kv_heads=12,
                                   head_dim=64, mlp_dim=1152),
    "modernbert_large": ModelConfig(**_MODERNBERT, d_model=1024, num_layers=28, num_heads=16, num_kv_heads=16,
                                    head_dim=64, mlp_dim=2624),
}

NAMES = tuple(_PRESETS)


def get(name: str) -> ModelConfig:
  """The preset ModelConfig called `name` (see NAMES); customise it with .replace(**overrides)."""
  if name not in _PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose one of {NAMES}")
  return _PRESETS[name]
