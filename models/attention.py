"""Self-attention with RoPE and GQA for one layer of a given AttentionType, over a whole sequence or a KV cache.

GLOBAL and LOCAL layers call attention.attend with their Mask; DSA layers (DeepSeek-V3.2-Exp, "DeepSeek
Sparse Attention") run a lightning indexer on the token, pick the top-k keys per query with
attention.topk_indices and attend over those only with attention.sparse_attend. The indexer is trained by
attention.indexer_kl_loss on a stop_gradient'ed copy of the layer input (V3.2 sec. 2.1: "we detach the
indexer input from the computational graph"), so the KL trains only the indexer and, in the sparse phase,
the LM loss trains the rest.

Two entry points: __call__ runs a whole sequence (training, scoring; context-parallel under a mesh with a
context axis), and extend runs new positions against a KV cache (models/kv_cache.py) and writes them in:
a chunk of the prompt at a shared start (prefill) or one token per row at its own position (decoding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

import attention
from attention import Mask, dsa, ring
from attention.rope import RopeScaling, apply_rope, rope_frequencies
from models import kv_cache
from models.config import AttentionType, ModelConfig
from models.layers import Dense


INDEXER_MODULES = ("q_idx", "k_idx", "w_idx", "smear_idx")  # the lightning indexer's params in a DSA layer


def is_indexer_param(path) -> bool:
  """Whether a parameter's key path (a tuple of names, or jax key entries) lies in a lightning indexer."""
  names = {getattr(k, "key", getattr(k, "name", k)) for k in path}
  return bool(names & set(INDEXER_MODULES))


def logn_scale(positions, length: int):
  """float32 [B, T]: max(1, log(p + 1) / log(length)) at positions p [B, T] (ModelConfig.logn_attention)."""
  return jnp.maximum(1.0, jnp.log1p(positions.astype(jnp.float32)) / jnp.log(float(length)))


def _topk_impl(impl: str) -> str:
  """topk_indices' impl for a layer's attention impl: the same name where topk_indices has it, else "auto"
  (e.g. for "cudnn")."""
  return impl if impl in dsa.TOPK_REGISTRY or impl == "pallas" else "auto"


class Attention(nnx.Module):
  """Multi-head attention of one layer; q [B, T, N, H], k/v [B, S, K, H] (GQA when K < N)."""

  def __init__(self, cfg: ModelConfig, layer_type: AttentionType, *, rngs: nnx.Rngs):
    self.cfg, self.layer_type = cfg, layer_type
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    qkv_bias = cfg.attention_bias or cfg.qkv_bias
    self.q = Dense((d,), (n, h), names=("embed", "heads", "head_dim"), std=cfg.init_std, use_bias=qkv_bias, **kw)
    self.k = Dense((d,), (k, h), names=("embed", "kv_heads", "head_dim"), std=cfg.init_std, use_bias=qkv_bias, **kw)
    self.v = Dense((d,), (k, h), names=("embed", "kv_heads", "head_dim"), std=cfg.init_std, use_bias=qkv_bias, **kw)
    self.o = Dense((n, h), (d,), names=("heads", "head_dim", "embed"), std=out_std, use_bias=cfg.attention_bias,
                   **kw)
    if cfg.smeared_keys:  # logit of the current key's share; 0: half current, half previous at init
      zeros = nnx.with_partitioning(nnx.initializers.zeros, ("kv_heads",))  # draws no key: other inits unchanged
      self.smear = nnx.Param(zeros(None, (k,), cfg.param_dtype), eager_sharding=False)
    if layer_type is AttentionType.LOCAL:
      left, right = cfg.window
      self.mask = Mask(causal=True, window=(left, 0)) if cfg.causal else Mask(window=(left, right))
      self.theta, self.scaling = cfg.rope_theta_local, RopeScaling()
    else:
      self.mask = Mask(causal=cfg.causal)
      self.theta, self.scaling = cfg.rope_theta, cfg.rope_scaling
    if layer_type is AttentionType.DSA:
      hi, di = cfg.dsa_index_heads, cfg.dsa_index_dim
      kw = dict(rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype, std=cfg.init_std)
      self.q_idx = Dense((d,), (hi, di), names=("embed", "indexer", None), **kw)
      self.k_idx = Dense((d,), (di,), names=("embed", None), **kw)
      self.w_idx = Dense((d,), (hi,), names=("embed", "indexer"), **kw)
      if cfg.dsa_smeared_keys:  # one logit for the indexer's single key head, as self.smear per kv head
        self.smear_idx = nnx.Param(nnx.initializers.zeros(None, (1,), cfg.param_dtype))

  def _rope(self, x, positions):
    """x [B, T, heads, H] rotated at positions [B, T] with the layer's theta and scaling."""
    h = self.cfg.head_dim
    inv_freq, att_scale = rope_frequencies(h, self.theta, self.scaling, seq_len=jnp.max(positions) + 1)
    return apply_rope(x, positions, inv_freq, att_scale, rotary_dim=h)

  def _qkv(self, x, positions, segment_ids=None, cache=None):
    """(q [B, T, N, H], k [B, T, K, H], v [B, T, K, H]) with RoPE, and the unrotated keys [B, T, K, H].

    With cfg.smeared_keys, cache["k_last"] ([B, K, H], the unrotated key before positions[:, 0]) feeds the
    first position; without a cache the first position of the row has no previous key.
    """
    k_raw = self.k(x)  # [B, T, K, H]
    k = self._smear(k_raw, positions, segment_ids, cache, self.smear, "k_last") if self.cfg.smeared_keys else k_raw
    q = self._rope(self.q(x), positions)  # [B, T, N, H]
    if self.cfg.logn_attention and self.layer_type is AttentionType.GLOBAL:
      q = q * logn_scale(positions, self.cfg.logn_attention)[..., None, None].astype(q.dtype)
    return q, self._rope(k, positions), self.v(x), k_raw

  @staticmethod
  def _smear(k, positions, segment_ids, cache, logit, last: str):
    """Smeared keys: sigmoid(a) k_t + (1 - sigmoid(a)) k_{t-1} where t-1 is in the same document, else k_t.

    k [B, T, K, H] with one logit a per head (logit [K]); cache[last] ([B, K, H]) is the key before the chunk.
    """
    first = jnp.zeros_like(k[:, :1]) if cache is None else cache[last][:, None].astype(k.dtype)
    before = jnp.concatenate([first, k[:, :-1]], axis=1)  # [B, T, K, H]: the key one position back
    has = positions > 0  # positions restart at 0 in every document
    if cache is None:
      has = has.at[:, 0].set(False)
    if segment_ids is not None:
      has &= segment_ids == jnp.concatenate([segment_ids[:, :1], segment_ids[:, :-1]], axis=1)
    a = jax.nn.sigmoid(logit[...].astype(jnp.float32)).astype(k.dtype)[:, None]  # [K, 1]
    return jnp.where(has[..., None, None], a * k + (1 - a) * before, k)

  def _indexer(self, x, positions, segment_ids=None, cache=None):
    """Indexer queries [B, T, Hi, Di], keys [B, T, Di], head weights [B, T, Hi] from a detached input, and
    the unrotated, unsmeared keys [B, T, Di] (what a cache keeps as k_idx_last).

    With cfg.dsa_smeared_keys the keys are smeared like the attention's (self._smear), so the indexer, too,
    can find "the position right after this key" (the value an MQAR query copies) in the first layer.
    """
    cfg = self.cfg
    x = jax.lax.stop_gradient(x)
    q_idx, k_raw = self.q_idx(x), self.k_idx(x)
    k_idx = k_raw
    if cfg.dsa_smeared_keys:
      k_idx = self._smear(k_raw[:, :, None], positions, segment_ids, cache, self.smear_idx, "k_idx_last")[:, :, 0]
    if cfg.dsa_rope_dim:
      inv_freq, _ = rope_frequencies(cfg.dsa_rope_dim, cfg.rope_theta, cfg.rope_scaling,
                                     seq_len=jnp.max(positions) + 1)  # not YaRN's temperature: indexer_rope
      q_idx, k_idx = dsa.indexer_rope(q_idx, k_idx, positions, positions, inv_freq, rotary_dim=cfg.dsa_rope_dim)
    # (Hi * Di)^-1/2 keeps the scores O(1) at init, as V3.2 scales the weights by Hi^-1/2 and q.k by Di^-1/2.
    w = self.w_idx(x).astype(jnp.float32) * (cfg.dsa_index_heads * cfg.dsa_index_dim) ** -0.5
    return q_idx, k_idx, w, k_raw

  def selection(self, x, positions, segment_ids=None):
    """A DSA layer's selected keys for every query, int32 [B, T, dsa_local_keys + top_k]: what __call__ attends
    over in its sparse phase (same indexer, top_k, local keys, mask, impl and score precision). For measuring
    the indexer's recall."""
    cfg = self.cfg
    if self.layer_type is not AttentionType.DSA:
      raise ValueError(f"selection() needs a DSA layer, this one is {self.layer_type.name}")
    q_idx, k_idx, w, _ = self._indexer(x, positions, segment_ids)
    return dsa.topk_indices(q_idx, k_idx, w, top_k=min(cfg.dsa_top_k, x.shape[1]), mask=self.mask,
                            segment_ids=segment_ids, impl=_topk_impl(cfg.attention_impl),
                            score_dtype=getattr(jnp, cfg.dsa_score_dtype), local_keys=cfg.dsa_local_keys)

  def __call__(self, x, positions, segment_ids=None, *, with_aux: bool = False):
    """x [B, T, D], positions [B, T] -> ([B, T, D], aux dict of scalar losses: the indexer KL of a DSA layer)."""
    cfg = self.cfg
    q, k, v, _ = self._qkv(x, positions, segment_ids)
    if self.layer_type is AttentionType.DSA:  # dense attention in the warm-up, top-k sparse attention after
      q_idx, k_idx, w, _ = self._indexer(x, positions, segment_ids)
      out, kl = dsa.dsa_self_attention(q, k, v, q_idx, k_idx, w, top_k=cfg.dsa_top_k, mask=self.mask,
                                       segment_ids=segment_ids, sparse=cfg.dsa_phase == "sparse", with_kl=with_aux,
                                       impl=cfg.attention_impl, topk_impl=_topk_impl(cfg.attention_impl),
                                       score_dtype=getattr(jnp, cfg.dsa_score_dtype), local_keys=cfg.dsa_local_keys)
      aux = {"indexer_kl": kl} if with_aux else {}
    else:
      out = ring.context_parallel_attend(q, k, v, mask=self.mask, segment_ids=segment_ids, impl=cfg.attention_impl)
      aux = {}
    out = checkpoint_name(out, "attention_out")  # [B, T, N, H]: what model.remat="attention_out" keeps
    return self.o(out), aux

  def init_cache(self, batch: int, cache_len: int):
    """The empty KV cache that extend fills."""
    return kv_cache.init(self.cfg, self.layer_type, batch, cache_len)

  def extend(self, x, start, lengths, cache):
    """New positions against the cache: x [B, C, D] at positions start + arange(C) attends causally to the
    positions cached before it and to itself, and is written into the cache.

    Args:
      x: [B, C, D].
      start: an int or int32 scalar shared by the rows (a prefill chunk), or int32 [B] (decoding, C = 1).
      lengths: int32 [B]; row b's positions from lengths[b] on are padding (decoding: start + 1).
      cache: this layer's cache (init_cache), holding the positions before start.
    Returns:
      ([B, C, D], the cache with the chunk written in). GLOBAL and DSA caches take the whole chunk (slots at
      or past lengths[b] are rewritten by decoding before any query can see them); a LOCAL ring keeps, per
      slot, the latest position < lengths[b]. RoPE scaling that depends on the length (dynamic_ntk) sees the
      chunk's last position.
    """
    cfg, impl = self.cfg, self.cfg.attention_impl
    b, c = x.shape[:2]
    positions = kv_cache.positions(start, b, c)  # [B, C]
    q, k, v, k_raw = self._qkv(x, positions, cache=cache)
    # The next chunk's first key is smeared with this chunk's last one (rows still in their prompt), and
    # decoding's with the last prompt position's.
    last = jnp.minimum(start + c, lengths) - 1  # [B]: each row's last position written by this chunk
    cache = kv_cache.set_last(cache, "k_last", k_raw, last - start)
    if self.layer_type is AttentionType.LOCAL:
      # Keys [ring, chunk] sit at contiguous positions, so the layer's own mask applies with the queries at
      # index W (q_offset=W); ring slots not written yet are masked out as a second segment.
      keys, values, kv_seg = kv_cache.ring_keys(cache, k, v, start)  # [B, W + C, K, H]
      out = attention.attend(q, keys, values, mask=self.mask, q_offset=keys.shape[1] - c, impl=impl,
                             segment_ids=jnp.ones((b, c), jnp.int32), kv_segment_ids=kv_seg)
      return self.o(out), kv_cache.ring_write(cache, k, v, start, last)
    cache = dict(cache, k=kv_cache.write(cache["k"], k, start), v=kv_cache.write(cache["v"], v, start))
    if self.layer_type is AttentionType.DSA:
      q_idx, k_idx, w, k_idx_raw = self._indexer(x, positions, cache=cache)
      cache = kv_cache.set_last(cache, "k_idx_last", k_idx_raw[:, :, None], last - start)
      cache["k_idx"] = kv_cache.write(cache["k_idx"], k_idx, start)
      if cfg.dsa_phase == "sparse":  # each query's top-k over every key before it, as in the full sequence
        indices = dsa.topk_indices(q_idx, cache["k_idx"], w, top_k=min(cfg.dsa_top_k, cache["k"].shape[1]),
                                   mask=self.mask, q_offset=start, impl=_topk_impl(impl),
                                   score_dtype=getattr(jnp, cfg.dsa_score_dtype),
                                   local_keys=cfg.dsa_local_keys)  # [B, C, W + top_k]
        return self.o(dsa.sparse_attend(q, cache["k"], cache["v"], indices, impl=impl)), cache
    # Slots past the chunk hold zeros or stale rows: the causal mask at q_offset=start hides them, and the
    # blockwise impls skip their blocks.
    return self.o(attention.attend(q, cache["k"], cache["v"], mask=self.mask, q_offset=start, impl=impl)), cache
