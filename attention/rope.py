"""Rotary position embeddings (RoFormer, arXiv 2104.09864) and the rules that stretch them to longer contexts.

Layout: the half-rotation of the Hugging Face Llama / ModernBERT code: dimension i pairs with i + D/2.
Scaling rules return the inverse frequencies and an attention scale (applied to cos and sin, so to both
q and k, as Hugging Face does; the logits then scale by its square):

- none:        theta^(-2i/D).
- linear:      Position Interpolation (Chen et al., arXiv 2306.15595): positions divided by the factor s,
               i.e. every frequency divided by s.
- ntk:         NTK-aware scaling: the base becomes theta * s^(D/(D-2)), so the highest frequency is
               unchanged and the lowest is interpolated by s.
- dynamic_ntk: the same, with s chosen from the current length L: s' = s*L/L0 - (s-1) when L > L0.
- yarn:        YaRN (Peng et al., arXiv 2309.00071): "NTK-by-parts": dimensions that turn more than
               beta_fast times over L0 keep their frequency, those turning fewer than beta_slow times are
               interpolated by s, a linear ramp in between; attention temperature sqrt(1/t) = 0.1 ln(s) + 1,
               or `attention_factor` when set (Hugging Face's name; 1.0 = YaRN without its temperature).
- llama3:      Llama 3.1's rule (Meta, "The Llama 3 Herd of Models", arXiv 2407.21783; transformers'
               _compute_llama3_parameters): the same by-parts idea measured in wavelengths: dimensions whose
               wavelength is under L0/high_freq_factor keep their frequency, those over L0/low_freq_factor
               are divided by s, and in between the inverse frequency is a linear blend in L0/wavelength;
               no attention temperature.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

SCALING_KINDS = ("none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """A context-extension rule. `original_max_len` (L0) is needed by dynamic_ntk, yarn and llama3; the
  frequency factors are llama3's (Llama 3.1 ships low 1, high 4, factor 8, L0 8192)."""

  kind: str = "none"
  factor: float = 1.0
  original_max_len: int | None = None
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  attention_factor: float | None = None  # yarn: the cos/sin scale; None = 0.1 ln(factor) + 1

  def __post_init__(self):
    if self.kind not in SCALING_KINDS:
      raise ValueError(f"RopeScaling.kind must be one of {SCALING_KINDS}, got {self.kind!r}")
    if not self.factor >= 1.0:
      raise ValueError(f"RopeScaling.factor must be >= 1, got {self.factor!r}")
    if self.kind in ("dynamic_ntk", "yarn", "llama3") and not (self.original_max_len and self.original_max_len > 0):
      raise ValueError(f"RopeScaling(kind={self.kind!r}) needs original_max_len > 0, got "
                       f"{self.original_max_len!r}")
    if self.beta_fast <= self.beta_slow:
      raise ValueError(f"RopeScaling needs beta_fast > beta_slow, got {self.beta_fast}, {self.beta_slow}")
    if not 0 < self.low_freq_factor < self.high_freq_factor:
      raise ValueError(f"RopeScaling needs 0 < low_freq_factor < high_freq_factor, got {self.low_freq_factor}, "
                       f"{self.high_freq_factor}")
    if self.attention_factor is not None and (self.kind != "yarn" or not self.attention_factor > 0):
      raise ValueError(f"RopeScaling.attention_factor applies to kind='yarn' only and must be > 0, got "
                       f"{self.attention_factor!r} with kind={self.kind!r}")


def _yarn_correction_dim(num_rotations: float, dim: int, theta: float, original_max_len: int) -> float:
  """The dimension index whose wavelength fits num_rotations times into L0 (YaRN eq. for r(d) = L0/lambda_d)."""
  return dim * math.log(original_max_len / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_ramp(dim: int, theta: float, scaling: RopeScaling):
  """[dim/2] float32 in [0, 1]: 0 keeps the frequency (extrapolate), 1 interpolates it by the factor."""
  low = math.floor(_yarn_correction_dim(scaling.beta_fast, dim, theta, scaling.original_max_len))
  high = math.ceil(_yarn_correction_dim(scaling.beta_slow, dim, theta, scaling.original_max_len))
  low, high = max(low, 0), min(high, dim - 1)
  high = high + 0.001 if low == high else high  # avoid 0/0 as the reference implementation does
  return jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)


def rope_frequencies(dim: int, theta: float = 10000.0, scaling: RopeScaling = RopeScaling(), seq_len=None):
  """Inverse frequencies [dim/2] (float32) and the attention scale for a rotary dimension `dim`.

  Args:
    dim: number of rotated dimensions (even).
    theta: the RoPE base, per call (ModernBERT uses 160000 for global and 10000 for local layers).
    scaling: the context-extension rule.
    seq_len: the current length (int or traced scalar); only dynamic_ntk reads it.
  """
  if dim < 2 or dim % 2:
    raise ValueError(f"rotary dim must be a positive even number, got {dim}")
  if theta <= 1:
    raise ValueError(f"theta must be > 1, got {theta}")
  exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim  # 2i/D
  base_freq = theta ** -exponents
  s = scaling.factor
  if scaling.kind == "none" or s == 1.0:
    return base_freq, 1.0
  if scaling.kind == "linear":
    return base_freq / s, 1.0
  if scaling.kind == "ntk":
    return (theta * s ** (dim / (dim - 2))) ** -exponents, 1.0
  if scaling.kind == "dynamic_ntk":
    if seq_len is None:
      raise ValueError("RopeScaling(kind='dynamic_ntk') needs seq_len")
    l0 = scaling.original_max_len
    s_dyn = jnp.maximum(s * jnp.asarray(seq_len, jnp.float32) / l0 - (s - 1), 1.0)
    return (theta * s_dyn ** (dim / (dim - 2))) ** -exponents, 1.0
  if scaling.kind == "llama3":
    # rotations over L0 = L0 / wavelength; the blend weight is 0 below low_freq_factor, 1 above high.
    rotations = scaling.original_max_len * base_freq / (2 * math.pi)
    keep = jnp.clip((rotations - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor),
                    0.0, 1.0)
    return (1 - keep) * base_freq / s + keep * base_freq, 1.0
  ramp = yarn_ramp(dim, theta, scaling)  # yarn
  scale = 0.1 * math.log(s) + 1.0 if scaling.attention_factor is None else scaling.attention_factor
  return base_freq * (1 - ramp) + (base_freq / s) * ramp, scale


def apply_rope(x, positions, inv_freq, attention_scale=1.0, rotary_dim: int | None = None):
  """Rotate x [B, T, N, H] by positions [B, T] (or [T]); only the first rotary_dim dims when given.

  inv_freq must have rotary_dim/2 entries (H/2 by default). Returns x's shape and dtype.
  """
  h = x.shape[-1]
  rd = h if rotary_dim is None else rotary_dim
  if rd > h or rd % 2 or inv_freq.shape[-1] != rd // 2:
    raise ValueError(f"rotary_dim {rd} must be even, <= head dim {h}, and twice len(inv_freq)="
                     f"{inv_freq.shape[-1]}")
  pos = jnp.asarray(positions, jnp.float32)
  pos = pos[None] if pos.ndim == 1 else pos  # [B|1, T]
  angles = pos[..., None] * inv_freq  # [B, T, rd/2]
  cos = (jnp.cos(angles) * attention_scale)[:, :, None, :]  # [B, T, 1, rd/2]
  sin = (jnp.sin(angles) * attention_scale)[:, :, None, :]
  xr, rest = x[..., :rd].astype(jnp.float32), x[..., rd:]
  x1, x2 = xr[..., :rd // 2], xr[..., rd // 2:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rotated.astype(x.dtype), rest], axis=-1)
