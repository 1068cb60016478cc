"""Passkey retrieval: a random 5-digit key hidden at a chosen depth in filler text, asked for at the end.

The task of Mohtashami & Jaggi (2023, "Landmark Attention: Random-Access Infinite Context Length for
Transformers", Sec. 4.2), with their prompt and filler, as used to test context extension in Position
Interpolation (Chen et al., 2023) and YaRN (Peng et al., 2023). Filler is perfectly predictable, so a model
can only answer by attending back to the key: the depth at which it still answers shows how far its
attention really reaches.

Two prompts: "landmark" is theirs (254 byte tokens before any filler, so it needs L >= 384); "compact"
keeps only the needle and the question (the same filler, about 50 byte tokens without filler), so a base
model trained at L0 = 128-256 sees the task with real filler around it. The compact key has 5 distinct
digits: with a repeated digit, copying by "the token after the previous one" (what a 2-layer induction
head does) is ambiguous, a failure of tiny models that has nothing to do with how far attention reaches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
PROMPTS = ("landmark", "compact")
COMPACT_NEEDLE = "The pass key is {key}. "
COMPACT_QUESTION = "\nThe pass key is"


@dataclasses.dataclass(frozen=True)
class PasskeyExample:
  """One prompt + answer of exactly `len(tokens)` tokens.

  tokens: int32 [L]: BOS, intro, filler with the needle inside, question, " " + key, EOS.
  key: the 5 digits.
  needle_start, needle_len: the needle's first token and its length; the key's digits sit inside it.
  haystack_start, haystack_len: where the filler (needle included) begins and how many tokens it spans.
  depth: the depth actually realised, (needle_start - haystack_start) / filler tokens, within one filler
    sentence of the requested depth.
  answer_start, answer_len: the answer tokens (" " + key) that a model must produce after the question.
  """

  tokens: np.ndarray
  key: str
  needle_start: int
  needle_len: int
  haystack_start: int
  haystack_len: int
  answer_start: int
  answer_len: int

  def answer_weights(self) -> np.ndarray:
    """float32 [L]: 1 at each position whose next token is an answer token (" " + key), else 0."""
    w = np.zeros(self.tokens.shape, np.float32)
    w[self.answer_start - 1:self.answer_start + self.answer_len - 1] = 1.0
    return w

  @property
  def key_start(self) -> int:
    """The position of the key's first digit inside the needle (what the answer's first digit copies)."""
    first_digit = self.tokens[self.answer_start + 1]  # the answer is " " + key
    return self.needle_start + int(np.argmax(self.tokens[self.needle_start:] == first_digit))

  @property
  def depth(self) -> float:
    return (self.needle_start - self.haystack_start) / max(self.haystack_len - self.needle_len, 1)


def passkey_example(tokenizer, length: int, depth: float, seed: int, prompt: str = "landmark") -> PasskeyExample:
  """A passkey prompt of exactly `length` tokens with the needle at `depth` (0 = start, 1 = end).

  Deterministic in `seed` (which picks the key). The needle is placed at a filler sentence boundary, so the
  realised depth is within one sentence of `depth`. `prompt` is "landmark" or "compact" (module docstring).
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  if prompt not in PROMPTS:
    raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
  rng = np.random.default_rng(seed)
  enc = tokenizer.encode
  if prompt == "landmark":
    key = str(rng.integers(10_000, 100_000))
    intro, needle, question = enc(INTRO, bos=True), enc(NEEDLE.format(key=key)), enc(QUESTION)
  else:
    key = "".join(str(d) for d in rng.permutation(10)[:5])
    intro, needle, question = enc("", bos=True), enc(COMPACT_NEEDLE.format(key=key)), enc(COMPACT_QUESTION)
  answer = enc(" " + key)
  end = np.array([tokenizer.eos_id], np.int32)
  filler_len = length - (intro.size + needle.size + question.size + answer.size + end.size)
  if filler_len < 0:
    raise ValueError(f"length={length} is too short for a passkey prompt; need at least "
                     f"{length - filler_len} tokens")
  sentences = [enc(s + ".") for s in FILLER.rstrip(". ").split(". ")]
  sentences = [np.concatenate([s, enc(" ")]) for s in sentences]
  cycle = np.concatenate(sentences)
  filler = np.resize(cycle, filler_len).astype(np.int32)  # [filler_len]: the cycle tiled and cut
  # Sentence boundaries inside the filler; the needle goes at the one nearest the requested depth.
  bounds = np.cumsum([0] + [s.size for s in sentences] * (filler_len // cycle.size + 1))
  bounds = bounds[bounds <= filler_len]
  cut = int(bounds[np.argmin(np.abs(bounds - depth * filler_len))])
  haystack = np.concatenate([filler[:cut], needle, filler[cut:]])
  tokens = np.concatenate([intro, haystack, question, answer, end]).astype(np.int32)
  answer_start = intro.size + haystack.size + question.size
  return PasskeyExample(tokens=tokens, key=key, needle_start=intro.size + cut, needle_len=needle.size,
                        haystack_start=intro.size,
                        haystack_len=haystack.size, answer_start=answer_start, answer_len=answer.size)


def min_length(tokenizer, prompt: str = "landmark") -> int:
  """The shortest prompt passkey_example can build (no filler; every key has 5 digits)."""
  ex = passkey_example(tokenizer, 10_000, 0.0, seed=0, prompt=prompt)
  return int(ex.tokens.size - (ex.haystack_len - ex.needle_len))


def passkey_row(tokenizer, seq_len: int, depth: float, seed: int, prompt: str = "landmark") -> dict[str, np.ndarray]:
  """A passkey example laid out as one packed training row (one segment, positions 0..T-1)."""
  ex = passkey_example(tokenizer, seq_len, depth, seed, prompt)
  return {"tokens": ex.tokens, "segment_ids": np.ones(seq_len, np.int32),
          "positions": np.arange(seq_len, dtype=np.int32)}
