"""Retrieval training rows made of several episodes of mixed lengths (a length curriculum inside each row).

A content-based retrieval head is found by gradient descent only through its effect on the answer, and at
initialisation a query spreads its attention over all n earlier tokens, so the gradient that points it at
the right key shrinks like 1/n. Short episodes give a strong signal from step one; long ones teach the full
range of distances. Packing episodes of lengths min_len, 2 min_len, ..., seq_len (drawn uniformly over the
doublings) into one row with their own segment ids and positions (data/packing.py: attention never crosses
episodes, RoPE sees each episode from position 0) trains both at once at no extra cost per row.
"""

from __future__ import annotations

import numpy as np

from data import packing


def episode_lengths(seq_len: int, min_len: int, rng: np.random.Generator) -> list[int]:
  """Lengths summing to seq_len, each >= min_len (if seq_len >= min_len), drawn uniformly over doublings."""
  if min_len < 2:
    raise ValueError(f"min_len must be >= 2, got {min_len}")
  choices = [min_len * 2**k for k in range(64) if min_len * 2**k <= seq_len] or [seq_len]
  out, left = [], seq_len
  while left:
    n = min(int(rng.choice(choices)), left)
    if left - n < min_len:
      n = left  # the tail would be too short for an episode: this one takes it
    out.append(n)
    left -= n
  return out


def episodes_row(make_tokens, tokenizer, seq_len: int, seed: int, min_len: int,
                 weighted: bool = False) -> dict[str, np.ndarray]:
  """One packed row of episodes: make_tokens(length, seed) -> int32 [length] builds each (e.g. an MQAR row).

  weighted: make_tokens returns (tokens, loss weights float32 [length]) instead (e.g. an example's
  answer_weights()), and the row also holds "loss_weights" [seq_len] (0 on padding), the per-position
  factor the trainer multiplies its loss weights by (training/targets.py).
  """
  rng = np.random.default_rng([seed, 0xE915])
  episodes = [make_tokens(n, int(rng.integers(2**31))) for n in episode_lengths(seq_len, min_len, rng)]
  row = packing.pack([e[0] for e in episodes] if weighted else episodes, seq_len, pad_id=tokenizer.pad_id)
  row = {k: v[0] for k, v in row.items()}
  if weighted:
    w = np.concatenate([np.asarray(e[1], np.float32) for e in episodes])
    row["loss_weights"] = np.pad(w, (0, seq_len - w.size))
  return row
