"""Multi-query associative recall accuracy by length and by gap (data/mqar.py's rows).

Scoring as in eval/passkey.py: one teacher-forced forward pass per row; a query is correct when the argmax
at its key's position is the pair's value, which is exactly what greedy decoding would emit there given the
row up to that key (tests check the two agree). Every row holds one pair per `pairs_every` tokens, so
accuracy at a longer length is over more and farther pairs; `by_gap` splits the queries of each length
into `gap_buckets` equal ranges of the gap (query position minus definition position, in tokens).
"""

from __future__ import annotations

import numpy as np

from data import mqar as mqar_lib
from eval.perplexity import make_scorer


def sample_seed(length: int, sample: int) -> int:
  """The fixed seed of one row: the same rows for every checkpoint evaluated (disjoint from training's
  seeds, which data.pipeline draws from [0, 2**31) per row index, only by chance)."""
  return 2**40 + length * 10_000 + sample


def score_rows(score, examples) -> np.ndarray:
  """Examples of one length -> bool [E, P]: is each query's argmax its value."""
  tokens = np.stack([ex.tokens for ex in examples])  # [E, L]
  targets = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], axis=1)
  cols = np.stack([ex.query_positions for ex in examples])  # [E, P]: position t predicts token t + 1
  rows = np.arange(len(examples))[:, None]
  weights = np.zeros(tokens.shape, np.float32)
  weights[rows, cols] = 1.0
  _, argmax = score(tokens, np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape),
                    np.ones_like(tokens), targets, weights)
  return argmax[rows, cols] == targets[rows, cols]


def usable_lengths(lengths, pairs_every: int = mqar_lib.PAIRS_EVERY) -> list[int]:
  """The lengths (sorted, deduplicated) long enough for an MQAR row of that pair density."""
  return sorted(n for n in set(lengths) if (n - 1) // 2 >= 2 * mqar_lib.num_pairs(n, pairs_every))


def by_gap(hit: np.ndarray, gaps: np.ndarray, length: int, buckets: int) -> tuple[list, list[float]]:
  """bool hit [Q] and gaps [Q] of one length -> (mean hit per equal gap range of [0, length], the edges);
  None for an empty range."""
  edges = np.linspace(0, length, buckets + 1)
  bucket = np.clip(np.searchsorted(edges, gaps, side="right") - 1, 0, buckets - 1)
  return [float(hit[bucket == b].mean()) if np.any(bucket == b) else None for b in range(buckets)], edges.tolist()


def mqar_accuracy(model, tokenizer, lengths: list[int], *, samples: int = 16, gap_buckets: int = 4,
                  pairs_every: int = mqar_lib.PAIRS_EVERY, batch_tokens: int = 16384) -> dict:
  """Query accuracy per length and per (length, gap bucket); lengths too short for one pair are skipped."""
  if model.cfg.arch != "decoder":
    raise ValueError("the mqar task needs a decoder checkpoint (arch='decoder')")
  if samples < 1:
    raise ValueError(f"mqar samples must be >= 1, got {samples}")
  if gap_buckets < 1:
    raise ValueError(f"mqar gap_buckets must be >= 1, got {gap_buckets}")
  usable = usable_lengths(lengths, pairs_every)
  if not usable:
    raise ValueError(f"every length in {sorted(set(lengths))} is too short for an MQAR row")
  score = make_scorer(model)
  acc, accuracy_by_gap, edges_out = [], [], []
  for n in usable:
    examples = [mqar_lib.mqar_example(tokenizer, n, sample_seed(n, s), pairs_every=pairs_every)
                for s in range(samples)]
    rows = max(1, batch_tokens // n)
    correct = np.concatenate([score_rows(score, examples[j:j + rows]) for j in range(0, samples, rows)])
    gaps = np.stack([ex.gaps for ex in examples])  # [E, P]
    acc.append(float(correct.mean()))
    buckets, edges = by_gap(correct.ravel(), gaps.ravel(), n, gap_buckets)
    accuracy_by_gap.append(buckets)
    edges_out.append(edges)
  return {"lengths": usable, "accuracy": acc, "by_gap": accuracy_by_gap, "gap_edges": edges_out, "samples": samples,
          "pairs": [mqar_lib.num_pairs(n, pairs_every) for n in usable],
          "skipped_lengths": sorted(set(lengths) - set(usable)),
          "scoring": "teacher-forced argmax at every query (= greedy exact match)"}
