"""Building blocks shared by the encoder and the decoder: dense maps, embeddings, norms, gated MLPs.

Every parameter carries logical axis names ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp",
"indexer" or None) through flax's sharding metadata, so a trainer maps them onto mesh axes with
`nnx.get_partition_spec` under `nnx.logical_axis_rules`. Parameters live in param_dtype, arithmetic runs
in dtype, and norms and softmax statistics run in float32 (as in Hugging Face Llama / ModernBERT).
Gated MLPs: SwiGLU / GeGLU (Shazeer, arXiv 2002.05202).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape, dtype, names) -> nnx.Param:
  """An nnx.Param with logical axis names; sharding is applied by the trainer, not at creation."""
  init = nnx.with_partitioning(init, tuple(names))
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), eager_sharding=False)


class Dense(nnx.Module):
  """y = x @ W (+ b) with W of shape in_shape + out_shape; contracts x's trailing len(in_shape) axes."""

  def __init__(self, in_shape, out_shape, *, names, rngs: nnx.Rngs, param_dtype, dtype, std: float,
               use_bias: bool = False):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.dtype = dtype
    init = nnx.initializers.truncated_normal(std)
    self.kernel = param(rngs, init, self.in_shape + self.out_shape, param_dtype, names)
    self.bias = (param(rngs, nnx.initializers.zeros, self.out_shape, param_dtype, names[len(self.in_shape):])
                 if use_bias else None)

  def __call__(self, x):
    n_in = len(self.in_shape)
    kernel = self.kernel[...].astype(self.dtype)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel,
                            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding [V, D]; `attend` reuses it as the tied output projection."""

  def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs, param_dtype, dtype, std: float):
    self.dtype = dtype
    self.embedding = param(rngs, nnx.initializers.normal(std), (vocab_size, d_model), param_dtype,
                           ("vocab", "embed"))

  def __call__(self, tokens):
    return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)  # [B, T, D]

  def attend(self, x):
    """Logits x @ E^T in float32: [B, T, D] -> [B, T, V]."""
    return jnp.einsum("btd,vd->btv", x.astype(jnp.float32), self.embedding[...].astype(jnp.float32))


class Norm(nnx.Module):
  """RMSNorm (Zhang & Sennrich, arXiv 1910.07467) or LayerNorm, computed in float32."""

  def __init__(self, d_model: int, *, kind: str, eps: float, use_bias: bool, rngs: nnx.Rngs, param_dtype,
               dtype):
    self.kind, self.eps, self.dtype = kind, eps, dtype
    self.scale = param(rngs, nnx.initializers.ones, (d_model,), param_dtype, (None,))
    self.bias = param(rngs, nnx.initializers.zeros, (d_model,), param_dtype, (None,)) if use_bias else None

  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.kind == "layer":
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class GatedMLP(nnx.Module):
  """act(x W_in) * (x W_gate) W_out; SwiGLU (silu) for the decoder, GeGLU (exact gelu) for ModernBERT."""

  def __init__(self, d_model: int, mlp_dim: int, *, kind: str, use_bias: bool, rngs: nnx.Rngs, param_dtype,
               dtype, std: float, out_std: float):
    kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, use_bias=use_bias)
    self.kind = kind
    self.wi = Dense((d_model,), (mlp_dim,), names=("embed", "mlp"), std=std, **kw)
    self.wg = Dense((d_model,), (mlp_dim,), names=("embed", "mlp"), std=std, **kw)
    self.wo = Dense((mlp_dim,), (d_model,), names=("mlp", "embed"), std=out_std, **kw)

  def __call__(self, x):
    h = self.wi(x)  # [B, T, F]
    h = jax.nn.silu(h) if self.kind == "swiglu" else jax.nn.gelu(h, approximate=False)
    return self.wo(h * self.wg(x))  # [B, T, D]
