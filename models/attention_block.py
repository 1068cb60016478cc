"""Self-attention with RoPE and GQA for one layer of a given AttentionType, full-sequence or with a KV cache.

GLOBAL and LOCAL layers call attention.attend with their Mask; DSA layers (DeepSeek-V3.2-Exp, "DeepSeek
Sparse Attention") run a lightning indexer on the token, pick the top-k keys per query with
attention.topk_indices and attend over those only with attention.sparse_attend. The indexer is trained by
attention.indexer_kl_loss on a stop_gradient'ed copy of the layer input (V3.2 sec. 2.1: "we detach the
indexer input from the computational graph"), so the KL trains only the indexer and, in the sparse phase,
the LM loss trains the rest.

KV caches (decoding): GLOBAL and DSA layers keep every position [B, C, K, H] (DSA also its indexer keys
[B, C, Di]); LOCAL layers keep a ring buffer of their window only, [B, W, K, H] with W = left + 1, and the
position held by each slot. With cfg.smeared_keys every cache also keeps "k_last" [B, K, H], the unrotated
key of each row's last written position, which the next position's key is smeared with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

import attention
from attention import Mask, dsa, ring
from attention.dsa.decode import decode_step, write_cache
from attention.rope import RopeScaling, apply_rope, rope_frequencies
from models.config import AttentionType, ModelConfig
from models.layers import Dense


INDEXER_MODULES = ("q_idx", "k_idx", "w_idx")  # the lightning indexer's projections in a DSA layer


def is_indexer_param(path) -> bool:
  """Whether a parameter's key path (a tuple of names, or jax key entries) lies in a lightning indexer."""
  names = {getattr(k, "key", getattr(k, "name", k)) for k in path}
  return bool(names & set(INDEXER_MODULES))


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

  def _rope(self, x, positions, theta, scaling, rotary_dim):
    inv_freq, att_scale = rope_frequencies(rotary_dim, theta, scaling, seq_len=jnp.max(positions) + 1)
    return apply_rope(x, positions, inv_freq, att_scale, rotary_dim=rotary_dim)

  def _qkv(self, x, positions, segment_ids=None, cache=None):
    """(q [B, T, N, H], k [B, T, K, H], v [B, T, K, H]) with RoPE, and the unrotated keys [B, T, K, H].

    With cfg.smeared_keys, cache["k_last"] ([B, K, H], the unrotated key before positions[:, 0]) feeds the
    first position; without a cache the first position of the row has no previous key.
    """
    h = self.cfg.head_dim
    q = self._rope(self.q(x), positions, self.theta, self.scaling, h)  # [B, T, N, H]
    k_raw = self.k(x)  # [B, T, K, H]
    k = self._smear(k_raw, positions, segment_ids, cache) if self.cfg.smeared_keys else k_raw
    return q, self._rope(k, positions, self.theta, self.scaling, h), self.v(x), k_raw

  def _smear(self, k, positions, segment_ids, cache):
    """Smeared keys: sigmoid(a) k_t + (1 - sigmoid(a)) k_{t-1} where t-1 is in the same document, else k_t."""
    first = jnp.zeros_like(k[:, :1]) if cache is None else cache["k_last"][:, None].astype(k.dtype)
    before = jnp.concatenate([first, k[:, :-1]], axis=1)  # [B, T, K, H]: the key one position back
    has = positions > 0  # positions restart at 0 in every document
    if cache is None:
      has = has.at[:, 0].set(False)
    if segment_ids is not None:
      has &= segment_ids == jnp.concatenate([segment_ids[:, :1], segment_ids[:, :-1]], axis=1)
    a = jax.nn.sigmoid(self.smear[...].astype(jnp.float32)).astype(k.dtype)[:, None]  # [K, 1]
    return jnp.where(has[..., None, None], a * k + (1 - a) * before, k)

  def _k_last(self, cache, k_raw, last):
    """cache with k_last set, for rows whose `last` (int32 [B], relative to k_raw's T) is inside k_raw."""
    if not self.cfg.smeared_keys:
      return cache
    inside = (last >= 0) & (last < k_raw.shape[1])
    picked = jnp.take_along_axis(k_raw, jnp.clip(last, 0, k_raw.shape[1] - 1)[:, None, None, None], axis=1)[:, 0]
    old = cache.get("k_last", jnp.zeros_like(picked))
    return dict(cache, k_last=jnp.where(inside[:, None, None], picked.astype(old.dtype), old))

  def _indexer(self, x, positions):
    """Indexer queries [B, T, Hi, Di], keys [B, T, Di] and head weights [B, T, Hi] from a detached input."""
    cfg = self.cfg
    x = jax.lax.stop_gradient(x)
    q_idx, k_idx = self.q_idx(x), self.k_idx(x)
    if cfg.dsa_rope_dim:
      inv_freq, att_scale = rope_frequencies(cfg.dsa_rope_dim, cfg.rope_theta, cfg.rope_scaling,
                                             seq_len=jnp.max(positions) + 1)
      q_idx, k_idx = dsa.indexer_rope(q_idx, k_idx, positions, positions, inv_freq, rotary_dim=cfg.dsa_rope_dim,
                                      attention_scale=att_scale)
    # (Hi * Di)^-1/2 keeps the scores O(1) at init, as V3.2 scales the weights by Hi^-1/2 and q.k by Di^-1/2.
    w = self.w_idx(x).astype(jnp.float32) * (cfg.dsa_index_heads * cfg.dsa_index_dim) ** -0.5
    return q_idx, k_idx, w

  def _dsa_full(self, q, k, v, x, positions, segment_ids, with_aux):
    """Full-sequence DSA (context-parallel under a mesh with a context axis): dense attention in the warm-up,
    top-k sparse attention after; plus the indexer KL."""
    cfg = self.cfg
    q_idx, k_idx, w = self._indexer(x, positions)
    out, kl = dsa.dsa_self_attention(q, k, v, q_idx, k_idx, w, top_k=cfg.dsa_top_k, mask=self.mask,
                                     segment_ids=segment_ids, sparse=cfg.dsa_phase == "sparse", with_kl=with_aux,
                                     impl=cfg.attention_impl, topk_impl=_topk_impl(cfg.attention_impl),
                                     score_dtype=getattr(jnp, cfg.dsa_score_dtype))
    return out, ({"indexer_kl": kl} if with_aux else {})

  def __call__(self, x, positions, segment_ids=None, *, with_aux: bool = False):
    """x [B, T, D], positions [B, T] -> ([B, T, D], aux dict of scalar losses)."""
    q, k, v, _ = self._qkv(x, positions, segment_ids)
    if self.layer_type is AttentionType.DSA:
      out, aux = self._dsa_full(q, k, v, x, positions, segment_ids, with_aux)
    else:
      out = ring.context_parallel_attend(q, k, v, mask=self.mask, segment_ids=segment_ids,
                                         impl=self.cfg.attention_impl)
      aux = {}
    out = checkpoint_name(out, "attention_out")  # [B, T, N, H]: what model.remat="attention_out" keeps
    return self.o(out), aux

  def prefill(self, x, lengths, cache_len: int):
    """Causal forward over right-padded prompts x [B, T, D] (row b valid up to lengths[b]) and its cache."""
    b, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    q, k, v, k_raw = self._qkv(x, positions)
    if self.layer_type is AttentionType.DSA:
      out, _ = self._dsa_full(q, k, v, x, positions, None, False)
    else:
      out = attention.attend(q, k, v, mask=self.mask, impl=self.cfg.attention_impl)
    pad = lambda a: jnp.zeros((b, cache_len) + a.shape[2:], a.dtype).at[:, :t].set(a)
    if self.layer_type is AttentionType.LOCAL:
      w = min(self.mask.window[0] + 1, cache_len)
      # Slot s holds the latest position p < length with p % W == s (-1: none yet).
      slot = jnp.arange(w, dtype=jnp.int32)[None, :]
      last = lengths[:, None].astype(jnp.int32) - 1
      slot_pos = last - jnp.mod(last - slot, w)  # [B, W]
      gather = lambda a: jnp.take_along_axis(a, jnp.maximum(slot_pos, 0)[:, :, None, None], axis=1)
      cache = {"k": gather(k), "v": gather(v), "slot_pos": slot_pos}
    else:
      cache = {"k": pad(k), "v": pad(v)}
      if self.layer_type is AttentionType.DSA:
        cache["k_idx"] = pad(self._indexer(x, positions)[1])
    return self.o(out), self._k_last(cache, k_raw, lengths.astype(jnp.int32) - 1)

  def init_cache(self, batch: int, cache_len: int):
    """The empty cache that prefill_chunk fills: zeros, and slot position -1 (nothing) in a LOCAL ring."""
    cfg = self.cfg
    kv = lambda s: jnp.zeros((batch, s, cfg.num_kv_heads, cfg.head_dim), cfg.dtype)
    if self.layer_type is AttentionType.LOCAL:
      w = min(self.mask.window[0] + 1, cache_len)
      cache = {"k": kv(w), "v": kv(w), "slot_pos": jnp.full((batch, w), -1, jnp.int32)}
    else:
      cache = {"k": kv(cache_len), "v": kv(cache_len)}
    if self.layer_type is AttentionType.DSA:
      cache["k_idx"] = jnp.zeros((batch, cache_len, cfg.dsa_index_dim), cfg.dtype)
    if cfg.smeared_keys:
      cache["k_last"] = kv(1)[:, 0]
    return cache

  def prefill_chunk(self, x, start, lengths, cache):
    """One chunk of a chunked prefill: x [B, C, D] at positions start + arange(C) (start: an int or int32
    scalar, shared by the rows) attends causally to the cache written so far and to itself.

    Returns ([B, C, D], the cache with the chunk written in). GLOBAL and DSA caches take the whole chunk
    (slots at or past lengths[b] are rewritten by decoding before any query can see them); a LOCAL ring
    keeps, per slot, the latest position < lengths[b], exactly as prefill leaves it. RoPE scaling that
    depends on the length (dynamic_ntk) sees the chunk's last position, as decode sees its own.
    """
    cfg, impl = self.cfg, self.cfg.attention_impl
    b, c = x.shape[:2]
    positions = start + jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
    q, k, v, k_raw = self._qkv(x, positions, cache=cache)
    # The next chunk's first key is smeared with this chunk's last one (rows still in their prompt), and
    # decoding's with the last prompt position's.
    last = jnp.minimum(start + c, lengths.astype(jnp.int32)) - 1 - start
    if self.layer_type is AttentionType.LOCAL:
      out, cache = self._local_chunk(q, k, v, start, lengths, cache)
      return out, self._k_last(cache, k_raw, last)
    cache = self._k_last(cache, k_raw, last)
    write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), start, 1)
    cache = dict(cache, k=write(cache["k"], k), v=write(cache["v"], v))
    if self.layer_type is AttentionType.DSA:
      q_idx, k_idx, w = self._indexer(x, positions)
      cache["k_idx"] = write(cache["k_idx"], k_idx)
      if cfg.dsa_phase == "sparse":  # each query's top-k over every key before it, as in the full sequence
        indices = dsa.topk_indices(q_idx, cache["k_idx"], w, top_k=min(cfg.dsa_top_k, cache["k"].shape[1]),
                                   mask=self.mask, q_offset=start, impl=_topk_impl(impl),
                                   score_dtype=getattr(jnp, cfg.dsa_score_dtype))  # [B, C, top_k]
        return self.o(dsa.sparse_attend(q, cache["k"], cache["v"], indices, impl=impl)), cache
    # Slots past the chunk hold zeros or stale rows: the causal mask at q_offset=start hides them, and the
    # blockwise impls skip their blocks.
    return self.o(attention.attend(q, cache["k"], cache["v"], mask=self.mask, q_offset=start, impl=impl)), cache

  def _local_chunk(self, q, k, v, start, lengths, cache):
    """Sliding-window attention of a chunk against the ring of the W positions before it, then the ring update."""
    b, c = q.shape[:2]
    w = cache["k"].shape[1]
    # The ring rolled into position order: index j holds position start - W + j if that was written. Keys
    # [ring, chunk] then sit at the contiguous positions start - W + j, so the layer's own mask applies with
    # the queries at index W + i (q_offset=W) and unwritten slots are masked out as a second segment.
    order = jnp.mod(start + jnp.arange(w, dtype=jnp.int32), w)  # [W]
    ring_pos = start - w + jnp.arange(w, dtype=jnp.int32)
    written = (jnp.take(cache["slot_pos"], order, axis=1) == ring_pos) & (ring_pos >= 0)  # [B, W]
    keys = jnp.concatenate([jnp.take(cache["k"], order, axis=1), k.astype(cache["k"].dtype)], axis=1)
    values = jnp.concatenate([jnp.take(cache["v"], order, axis=1), v.astype(cache["v"].dtype)], axis=1)
    kv_seg = jnp.concatenate([written.astype(jnp.int32), jnp.ones((b, c), jnp.int32)], axis=1)  # [B, W + C]
    out = attention.attend(q, keys, values, mask=self.mask, q_offset=w, segment_ids=jnp.ones((b, c), jnp.int32),
                           kv_segment_ids=kv_seg, impl=self.cfg.attention_impl)
    # Slot s takes the latest position p < lengths[b] of this chunk with p % W == s (a chunk longer than
    # the window writes each slot once, with its last position); other slots keep what they held.
    last = jnp.minimum(start + c, lengths.astype(jnp.int32))[:, None] - 1  # [B, 1]
    new_pos = last - jnp.mod(last - jnp.arange(w, dtype=jnp.int32)[None], w)  # [B, W]
    take = new_pos >= start
    src = jnp.clip(new_pos - start, 0, c - 1)[:, :, None, None]
    pick = lambda new, old: jnp.where(take[:, :, None, None], jnp.take_along_axis(new.astype(old.dtype), src, 1), old)
    cache = dict(cache, k=pick(k, cache["k"]), v=pick(v, cache["v"]),
                 slot_pos=jnp.where(take, new_pos, cache["slot_pos"]))
    return self.o(out), cache

  def decode(self, x, pos, cache):
    """One new token per row: x [B, 1, D] at positions pos [B] -> ([B, 1, D], updated cache)."""
    cfg, rows = self.cfg, jnp.arange(x.shape[0])
    positions = pos[:, None]
    q, k, v, k_raw = self._qkv(x, positions, cache=cache)
    if cfg.smeared_keys:
      cache = dict(cache, k_last=k_raw[:, 0].astype(cache["k_last"].dtype))
    impl = cfg.attention_impl
    if self.layer_type is AttentionType.LOCAL:
      slot = pos % cache["k"].shape[1]
      cache = dict(cache, k=cache["k"].at[rows, slot].set(k[:, 0]), v=cache["v"].at[rows, slot].set(v[:, 0]),
                   slot_pos=cache["slot_pos"].at[rows, slot].set(pos))
      # Ring order is not position order: visibility comes from the slot positions, as segment ids.
      sp = cache["slot_pos"]
      visible = (sp >= 0) & (sp >= positions - self.mask.window[0])  # [B, W]
      out = attention.attend(q, cache["k"], cache["v"], mask=Mask(), impl=impl,
                             segment_ids=jnp.ones_like(positions), kv_segment_ids=visible.astype(jnp.int32))
      return self.o(out), cache
    cache = dict(cache, k=cache["k"].at[rows, pos].set(k[:, 0]), v=cache["v"].at[rows, pos].set(v[:, 0]))
    if self.layer_type is AttentionType.DSA and cfg.dsa_phase == "sparse":
      q_idx, k_idx, w = self._indexer(x, positions)
      cache["k_idx"] = write_cache(cache["k_idx"], k_idx, pos)
      out, _ = decode_step(q, cache["k"], cache["v"], q_idx, cache["k_idx"], w, pos=pos,
                           top_k=min(cfg.dsa_top_k, cache["k"].shape[1]), mask=self.mask, impl=impl,
                           topk_impl=_topk_impl(impl), score_dtype=getattr(jnp, cfg.dsa_score_dtype))
    else:
      if self.layer_type is AttentionType.DSA:
        cache["k_idx"] = write_cache(cache["k_idx"], self._indexer(x, positions)[1], pos)
      out = attention.attend(q, cache["k"], cache["v"], mask=self.mask, q_offset=pos, impl=impl)
    return self.o(out), cache
