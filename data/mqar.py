"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology", arXiv 2312.04927), laid out for
context-extension tests.

A row is BOS followed by two-token slots. `num_pairs` slots define a key-value pair (k, v); for each pair,
one later slot queries it by repeating the key, and the model must produce v there. The other slots hold
filler (two random lowercase letters). Keys and values come from disjoint token ranges that natural text
does not use (byte ids 128-191 and 192-255: UTF-8 continuation/lead bytes never appear bare in ASCII
source code), so a retrieval row and a corpus row never compete for the same token meanings, and the value
softmax has only `num_values` live choices.

Two choices differ from Zoology's generator on purpose:
  - The gap between a pair and its query is uniform over the whole row (Zoology puts every pair first and
    draws query positions from a power law, so most gaps are short): an extension test must ask for keys
    at every distance up to the new length, not mostly near ones.
  - The number of pairs grows with the length (one pair per `pairs_every` tokens), so a longer row is a
    harder row, not the same task padded with filler.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KEY_BASE, NUM_KEYS = 128, 64  # byte ids 128..191
VALUE_BASE, NUM_VALUES = 192, 64  # byte ids 192..255
PAIRS_EVERY = 16
FILLER = np.arange(ord("a"), ord("z") + 1, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class MqarExample:
  """One row of exactly `len(tokens)` tokens.

  tokens: int32 [L]: BOS, then slots (key value | key value | filler filler), then filler to length L.
  query_positions: int32 [P]: the position of each query's key; the answer (the value) is the next token.
  gaps: int32 [P]: query position minus the position of the same key's definition (tokens).
  values: int32 [P]: the value each query must produce.
  """

  tokens: np.ndarray
  query_positions: np.ndarray
  gaps: np.ndarray
  values: np.ndarray

  @property
  def answer_positions(self) -> np.ndarray:
    return self.query_positions + 1

  def answer_weights(self) -> np.ndarray:
    """float32 [L]: 1 at each query's key (the position whose next-token target is the answer), else 0."""
    w = np.zeros(self.tokens.shape, np.float32)
    w[self.query_positions] = 1.0
    return w


def num_pairs(length: int, pairs_every: int = PAIRS_EVERY, num_keys: int = NUM_KEYS) -> int:
  """Pairs in a row of `length` tokens: one per `pairs_every` tokens, at least 1, at most `num_keys`."""
  return max(1, min(num_keys, length // pairs_every))


def _check_ranges(tokenizer, key_base, num_keys, value_base, num_values):
  if num_keys < 1 or num_values < 1:
    raise ValueError(f"num_keys and num_values must be >= 1, got {num_keys}, {num_values}")
  if key_base < value_base + num_values and value_base < key_base + num_keys:
    raise ValueError(f"key range [{key_base}, {key_base + num_keys}) and value range "
                     f"[{value_base}, {value_base + num_values}) overlap")
  top = max(key_base + num_keys, value_base + num_values)
  if min(key_base, value_base) < 0 or top > tokenizer.num_regular_tokens:
    raise ValueError(f"key/value ids must lie in [0, {tokenizer.num_regular_tokens}) (the tokenizer's regular "
                     f"tokens), got up to {top}")


def mqar_example(tokenizer, length: int, seed: int, *, pairs: int | None = None, key_base: int = KEY_BASE,
                 num_keys: int = NUM_KEYS, value_base: int = VALUE_BASE, num_values: int = NUM_VALUES,
                 pairs_every: int = PAIRS_EVERY) -> MqarExample:
  """An MQAR row of exactly `length` tokens, deterministic in `seed`.

  Each pair draws its gap g (in slots) uniformly from 1..S-1 (S = slots in the row) and its definition slot
  uniformly from the S - g places where the query still fits; a draw that lands on a taken slot is redrawn
  (gap included), which keeps the gap distribution uniform because every gap is equally likely to collide.
  `pairs` (default num_pairs(length)) distinct keys are used, each queried once.
  """
  _check_ranges(tokenizer, key_base, num_keys, value_base, num_values)
  pairs = num_pairs(length, pairs_every, num_keys) if pairs is None else pairs
  slots = (length - 1) // 2
  if not 1 <= pairs <= num_keys:
    raise ValueError(f"pairs must be in [1, num_keys={num_keys}], got {pairs}")
  if 2 * pairs > slots:
    raise ValueError(f"length={length} has {slots} two-token slots, too few for {pairs} pairs and their queries")
  rng = np.random.default_rng(seed)
  keys = key_base + rng.choice(num_keys, pairs, replace=False)
  values = value_base + rng.integers(0, num_values, pairs)
  taken = np.zeros(slots, bool)
  define, query = np.zeros(pairs, np.int64), np.zeros(pairs, np.int64)
  for i in range(pairs):
    for _ in range(10_000):
      g = int(rng.integers(1, slots))
      d = int(rng.integers(0, slots - g))
      if not taken[d] and not taken[d + g]:
        break
    else:  # only reachable when nearly every slot is taken
      raise ValueError(f"could not place {pairs} pairs in {slots} slots; use fewer pairs or a longer row")
    taken[d] = taken[d + g] = True
    define[i], query[i] = d, d + g
  tokens = rng.choice(FILLER, length).astype(np.int32)  # [L]: filler everywhere, then the slots written over it
  tokens[0] = tokenizer.bos_id
  for pos in (1 + 2 * define, 1 + 2 * query):
    tokens[pos], tokens[pos + 1] = keys, values
  order = np.argsort(query)
  query_positions = (1 + 2 * query[order]).astype(np.int32)
  return MqarExample(tokens=tokens, query_positions=query_positions,
                     gaps=(2 * (query - define))[order].astype(np.int32), values=values[order].astype(np.int32))


def mqar_row(tokenizer, seq_len: int, seed: int, **kwargs) -> dict[str, np.ndarray]:
  """An MQAR example laid out as one packed training row (one segment, positions 0..T-1)."""
  ex = mqar_example(tokenizer, seq_len, seed, **kwargs)
  return {"tokens": ex.tokens, "segment_ids": np.ones(seq_len, np.int32),
          "positions": np.arange(seq_len, dtype=np.int32)}
