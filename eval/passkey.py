"""Passkey retrieval accuracy over a grid of prompt lengths x needle depths (the needle-in-a-haystack
picture), the test of context extension used by Position Interpolation (Chen et al., arXiv 2306.15595,
Sec. 3.4) and YaRN (Peng et al., arXiv 2309.00071, Sec. 4.3).

Prompts come from data.passkey_example (Mohtashami & Jaggi, 2023): a random 5-digit key, seeded per
(length, depth, sample), at the given depth of the filler, asked for at the end. Scoring: one forward pass
over prompt + answer (teacher forcing); a sample is correct when the argmax at every answer position is
the key's token. That is exactly the exact-match of greedy decoding with models.generate: greedy decoding
reproduces the key iff each answer token is the argmax given the correct tokens before it (tests check
the two agree), and it costs one forward pass instead of a prefill plus one decode step per digit.
"""

from __future__ import annotations

import numpy as np

import data as data_lib
from eval.perplexity import make_scorer

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def min_length(tokenizer, prompt: str = "landmark") -> int:
  """The shortest prompt data.passkey_example can build (no filler; every key has 5 digits)."""
  return data_lib.passkey.min_length(tokenizer, prompt)


def sample_seed(length: int, depth: float, sample: int) -> int:
  """The fixed seed of one grid cell's sample: the same keys for every checkpoint evaluated."""
  return (length * 1000 + round(depth * 100)) * 100 + sample


def score_examples(score, examples) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Examples of one length -> (exact match [E] bool, mean log-prob of the answer tokens [E], predicted)."""
  tokens = np.stack([ex.tokens for ex in examples])  # [E, L]
  e, n = tokens.shape
  targets = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], axis=1)
  weights = np.zeros(tokens.shape, np.float32)
  rows = np.arange(e)[:, None]
  # Position t predicts token t + 1: the answer's tokens are predicted at answer_start - 1 onwards.
  cols = np.stack([np.arange(ex.answer_start - 1, ex.answer_start - 1 + ex.answer_len) for ex in examples])
  weights[rows, cols] = 1.0
  ce, argmax = score(tokens, np.broadcast_to(np.arange(n, dtype=np.int32), tokens.shape), np.ones_like(tokens),
                     targets, weights)
  predicted, wanted = argmax[rows, cols], targets[rows, cols]  # [E, answer_len]
  correct = np.all(predicted == wanted, axis=1)
  logprob = -ce[rows, cols].mean(axis=1)
  return correct, logprob, [bytes(int(t) for t in p if t < 256).decode("utf-8", "replace") for p in predicted]


def passkey_grid(model, tokenizer, lengths: list[int], *, depths=DEPTHS, samples: int = 5,
                 batch_tokens: int = 16384, prompt: str = "landmark") -> dict:
  """Exact-match accuracy [len(lengths), len(depths)] (lengths too short for a prompt are skipped).

  `prompt` is data.passkey's "landmark" or "compact" (the one the model was trained on).
  """
  if model.cfg.arch != "decoder":
    raise ValueError("the passkey task needs a decoder checkpoint (arch='decoder')")
  if samples < 1:
    raise ValueError(f"passkey samples must be >= 1, got {samples}")
  shortest = min_length(tokenizer, prompt)
  usable = sorted(n for n in set(lengths) if n >= shortest)
  if not usable:
    raise ValueError(f"every length in {sorted(set(lengths))} is shorter than a passkey prompt ({shortest} tokens)")
  score = make_scorer(model)
  acc = np.zeros((len(usable), len(depths)))
  logprob = np.zeros_like(acc)
  cells = []
  for i, n in enumerate(usable):
    examples = [data_lib.passkey_example(tokenizer, n, d, seed=sample_seed(n, d, s), prompt=prompt) for d in depths
                for s in range(samples)]
    rows = max(1, batch_tokens // n)
    parts = [score_examples(score, examples[j:j + rows]) for j in range(0, len(examples), rows)]
    correct = np.concatenate([p[0] for p in parts]).reshape(len(depths), samples)
    lp = np.concatenate([p[1] for p in parts]).reshape(len(depths), samples)
    answers = [a for p in parts for a in p[2]]
    acc[i], logprob[i] = correct.mean(axis=1), lp.mean(axis=1)
    for j, ex in enumerate(examples):
      cells.append({"length": n, "depth": depths[j // samples], "realised_depth": round(ex.depth, 4),
                    "key": ex.key, "predicted": answers[j].strip(), "correct": bool(correct.flat[j])})
  return {"lengths": usable, "depths": list(depths), "samples": samples, "accuracy": acc.tolist(),
          "accuracy_per_length": acc.mean(axis=1).tolist(), "answer_logprob": logprob.tolist(),
          "skipped_lengths": sorted(n for n in set(lengths) if n < shortest), "prompt": prompt,
          "scoring": "teacher-forced argmax of every answer token (= greedy exact match)", "examples": cells}
