"""The KV cache of one attention layer: its layout per AttentionType, chunk writes, and the LOCAL ring buffer.

GLOBAL and DSA layers keep every position: k, v [B, S, K, H] with position p in slot p (DSA also its
lightning indexer's keys, k_idx [B, S, Di]). LOCAL layers keep a ring of their window only: k, v
[B, W, K, H] with W = left + 1, position p in slot p % W, and slot_pos [B, W], the position each slot
holds (-1: none yet). With cfg.smeared_keys every cache also keeps k_last [B, K, H], the unrotated key of
each row's last written position, which the next position's key is smeared with; with cfg.dsa_smeared_keys
a DSA cache keeps the indexer's, k_idx_last [B, 1, Di], the same way.

A chunk of C new positions start + arange(C) is written at once; `start` is an int or int32 scalar shared by
the rows (chunked prefill) or an int32 [B] (decoding, C = 1, every row at its own length).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models.config import AttentionType, ModelConfig


def init(cfg: ModelConfig, layer_type: AttentionType, batch: int, cache_len: int) -> dict:
  """The empty cache of a layer holding up to cache_len positions: zeros, and no position in a LOCAL ring."""
  kv = lambda s: jnp.zeros((batch, s, cfg.num_kv_heads, cfg.head_dim), cfg.dtype)
  if layer_type is AttentionType.LOCAL:
    w = min(cfg.window[0] + 1, cache_len)
    cache = {"k": kv(w), "v": kv(w), "slot_pos": jnp.full((batch, w), -1, jnp.int32)}
  else:
    cache = {"k": kv(cache_len), "v": kv(cache_len)}
  if layer_type is AttentionType.DSA:
    cache["k_idx"] = jnp.zeros((batch, cache_len, cfg.dsa_index_dim), cfg.dtype)
    if cfg.dsa_smeared_keys:
      cache["k_idx_last"] = jnp.zeros((batch, 1, cfg.dsa_index_dim), cfg.dtype)  # [B, 1 head, Di]
  if cfg.smeared_keys:
    cache["k_last"] = kv(1)[:, 0]
  return cache


def write(buf, new, start):
  """buf [B, S, ...] with new [B, C, ...] written at positions start + arange(C)."""
  new = new.astype(buf.dtype)
  if jnp.ndim(start) == 0:  # one offset for every row: a slice update, in place inside the prefill scan
    return jax.lax.dynamic_update_slice_in_dim(buf, new, start, 1)
  # Per-row offsets (decoding): a scatter, which drops a row's write past the cache instead of clamping it.
  idx = start[:, None] + jnp.arange(new.shape[1], dtype=jnp.int32)  # [B, C]
  return buf.at[jnp.arange(buf.shape[0])[:, None], idx].set(new)


def set_last(cache, name: str, k_raw, last):
  """cache with cache[name] (k_last or k_idx_last, [B, K, H]) taken from k_raw [B, C, K, H] at index last [B],
  for the rows where that is inside the chunk; the cache unchanged when it keeps no such key."""
  if name not in cache:
    return cache
  c = k_raw.shape[1]
  picked = jnp.take_along_axis(k_raw, jnp.clip(last, 0, c - 1)[:, None, None, None], axis=1)[:, 0]  # [B, K, H]
  inside = (last >= 0) & (last < c)
  return dict(cache, **{name: jnp.where(inside[:, None, None], picked.astype(cache[name].dtype), cache[name])})


def positions(start, batch: int, n: int):
  """[B, n] int32: start + arange(n) in every row (start: an int, int32 scalar or int32 [B])."""
  return jnp.broadcast_to(jnp.reshape(start, (-1, 1)) + jnp.arange(n, dtype=jnp.int32), (batch, n))


def ring_keys(cache, k, v, start):
  """The ring rolled into position order, then the chunk k, v [B, C, K, H]: keys and values [B, W + C, K, H]
  at the contiguous positions start - W + j, and kv segment ids [B, W + C], 0 where a slot does not hold
  its position (not written yet), else 1."""
  b, w = cache["slot_pos"].shape
  ring_pos = positions(start - w, b, w)  # [B, W]
  order = jnp.mod(ring_pos, w)  # the slot of each position
  written = (jnp.take_along_axis(cache["slot_pos"], order, axis=1) == ring_pos) & (ring_pos >= 0)
  roll = lambda buf, new: jnp.concatenate(
      [jnp.take_along_axis(buf, order[:, :, None, None], axis=1), new.astype(buf.dtype)], axis=1)
  kv_seg = jnp.concatenate([written.astype(jnp.int32), jnp.ones(k.shape[:2], jnp.int32)], axis=1)
  return roll(cache["k"], k), roll(cache["v"], v), kv_seg


def ring_write(cache, k, v, start, last):
  """cache with the chunk k, v [B, C, K, H] (positions start + arange(C)) written into the ring up to position
  last [B], the chunk's last one or, if it comes first, the row's last prompt position: slot s takes the latest
  position p <= last with p % W == s if the chunk holds it (a chunk longer than the window writes each slot
  once, with its last position); other slots keep theirs."""
  b, w = cache["slot_pos"].shape
  first = positions(start, b, 1)  # [B, 1]
  last = last[:, None]
  new_pos = last - jnp.mod(last - jnp.arange(w, dtype=jnp.int32), w)  # [B, W]: the latest p <= last in slot s
  take = new_pos >= first
  src = jnp.clip(new_pos - first, 0, k.shape[1] - 1)[:, :, None, None]
  pick = lambda new, old: jnp.where(take[:, :, None, None], jnp.take_along_axis(new.astype(old.dtype), src, 1), old)
  slot_pos = jnp.where(take, new_pos, cache["slot_pos"])
  return dict(cache, k=pick(k, cache["k"]), v=pick(v, cache["v"]), slot_pos=slot_pos)
