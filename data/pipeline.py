"""The input pipeline: corpus -> tokens -> packed rows -> shuffled, passkey-mixed, batched grain datasets.

Built on grain's MapDataset (random access), so every batch is a pure function of (seed, batch index): the
iterator state saved in a checkpoint is just the next index, and a restored run sees exactly the batches it
would have seen without the interruption. Shuffling reseeds every epoch (grain's `repeat`), and the passkey
mix is decided per row index, so it too survives a resume.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from data import corpus as corpus_lib
from data import mqar, packing, passkey, retrieval

ROW_KEYS = ("tokens", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class PackedSplits:
  """Packed rows of the train and validation documents: dicts of int32 [R, T] arrays."""

  train: dict[str, np.ndarray]
  val: dict[str, np.ndarray]
  num_train_documents: int
  num_val_documents: int


def load_splits(sources, tokenizer, *, seq_len: int, val_fraction: float, seed: int,
                max_documents: int = 0, text_field: str = "text", bad_files: str = "error") -> PackedSplits:
  """Read, split (by document name), tokenize (BOS + text + EOS) and pack both splits.

  Training documents are laid out in a seed-dependent order before packing, so which documents share a row
  depends on the seed too; validation documents keep their sorted order, so validation never changes.
  `max_documents` > 0 keeps a seed-independent subset (see corpus.load_documents) for small runs;
  `text_field` names the text in .jsonl / .parquet files; `bad_files` says what an unreadable file does.
  """
  docs = corpus_lib.load_documents(sources, max_documents, text_field, bad_files)
  train_docs, val_docs = corpus_lib.split_documents(docs, val_fraction)
  order = np.random.default_rng(seed).permutation(len(train_docs))
  encode = lambda d: tokenizer.encode(d.text, bos=True, eos=True)
  train_tokens = [encode(train_docs[i]) for i in order]
  val_tokens = [encode(d) for d in val_docs]
  # BOS + EOS alone would pack into rows that teach nothing: empty files must not pass for a corpus.
  for split, tokens, least in (("training", train_tokens, seq_len), ("validation", val_tokens, 1)):
    text = sum(len(t) - 2 for t in tokens)
    if text < least:
      raise ValueError(f"corpus {sources!r}: its {len(tokens)} {split} documents hold {text} tokens of text "
                       f"(BOS/EOS aside), fewer than {least} (the {split} split needs at least "
                       f"{'one row of data.seq_len' if least > 1 else 'one token'}); give it longer documents")
  train = packing.pack(train_tokens, seq_len, pad_id=tokenizer.pad_id)
  val = packing.pack(val_tokens, seq_len, pad_id=tokenizer.pad_id)
  return PackedSplits(train, val, len(train_docs), len(val_docs))


class _Rows:
  """Row i of a dict of [R, T] arrays, as a random-access grain source."""

  def __init__(self, rows: dict[str, np.ndarray]):
    self._rows = rows
    self._len = len(rows["tokens"])

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i):
    return {k: self._rows[k][i] for k in ROW_KEYS}


def jitter_positions(positions: np.ndarray, stride: int, rng: np.random.Generator) -> np.ndarray:
  """Randomised positions (Ruoss et al., arXiv 2305.16843, in miniature): int32 [T] positions that restart at 0
  per piece -> the same pieces, each starting at 0 and advancing by a stride drawn uniformly from 1..stride
  per token, so order is kept but no distance between two tokens is exact: a head that recognises a place
  by its precise offset from a landmark (a RoPE-fragile shortcut) cannot fit it, a head that matches content
  can. The largest position grows to about (1 + stride) / 2 times the piece's length.
  """
  steps = rng.integers(1, stride + 1, positions.shape) * (positions > 0)  # 0 at every piece's first token
  total = np.cumsum(steps)
  start = np.maximum.accumulate(np.where(positions == 0, np.arange(positions.size), 0))  # each token's piece start
  return (total - total[start]).astype(np.int32)


PASSKEY_DEPTHS = ("uniform", "log_distance")


def draw_depth(rng: np.random.Generator, n: int, kind: str) -> float:
  """A passkey needle's depth in [0, 1] for a prompt of n tokens.

  "uniform": uniform in depth, so a needle within d tokens of the question is drawn with probability ~d/n,
  at n = 8192 almost never.
  "log_distance": half uniform; half with the needle's distance from the question log-uniform over
  [1, n] tokens, so every doubling of the distance is equally common at every length. Measured as a lever
  of the 64x extension in docs/results/extension_64x/probes/passkey_mix_64x/.
  """
  u = float(rng.random())
  if kind == "uniform" or rng.random() < 0.5:
    return u
  return 1.0 - float(n) ** -u  # distance (1 - depth) n = n^(1 - u): log-uniform over [1, n]


def train_dataset(rows: dict[str, np.ndarray], tokenizer, *, batch_size: int, seed: int,
                  passkey_rate: float = 0.0, passkey_prompt: str = "landmark", mqar_rate: float = 0.0,
                  episode_min_len: int = 0, mqar_loss: str = "all", position_stride: int = 1,
                  passkey_depth: str = "uniform", passkey_whole_rate: float = 0.0, shard_index: int = 0,
                  shard_count: int = 1) -> grain.MapDataset:
  """An infinite MapDataset of batches {tokens, segment_ids, positions}: int32 [batch_size, T].

  Rows are shuffled per epoch; decided per row index (deterministically), a row is replaced with
  probability `passkey_rate` by a passkey example (prompt `passkey_prompt`) at a depth drawn by
  `passkey_depth` (draw_depth: "uniform" or "log_distance"), and with probability `mqar_rate` by an MQAR
  row (data/mqar.py). `episode_min_len` > 0 makes those rows packs of episodes of mixed lengths from
  episode_min_len up (data/retrieval.py; passkey episodes start at the first doubling that holds a prompt),
  except that a passkey row is one whole-row prompt with probability `passkey_whole_rate` (needles past
  seq_len / 2 exist only in those: a pack draws one in log2(seq_len / episode_min_len) + 1).
  `mqar_loss` "answers" adds "loss_weights" float32 [batch_size, T] to every batch that weights the
  retrieval answers:
    - MQAR rows: 0 except where the next token is an answer (a value at its query), which weighs episode
      length / answers, so an episode carries the weight of as many scored text tokens while the random keys,
      values and filler that no model can predict do not drown the retrieval gradient (with 0/1 weights the
      answers were ~7% of the loss and MQAR was never learned in the mix);
    - passkey rows: every token 1 (their filler is a repeating cycle, and copying it trains induction
      heads), plus the answer (" " + key) weighted as much as the rest of its episode together;
    - text rows: 1.
  "all" (the default) scores every token with weight 1.
  `position_stride` > 1 re-draws every row's positions with jitter_positions.
  `shard_index`/`shard_count` give this host its share of every global batch (batch_size is the per-host batch).
  """
  if not (0.0 <= passkey_rate <= 1.0 and 0.0 <= mqar_rate <= 1.0 - passkey_rate):
    raise ValueError(f"passkey_rate and mqar_rate must be in [0, 1] with a sum <= 1, got {passkey_rate}, "
                     f"{mqar_rate}")
  if mqar_loss not in ("all", "answers"):
    raise ValueError(f"mqar_loss must be 'all' or 'answers', got {mqar_loss!r}")
  if position_stride < 1:
    raise ValueError(f"position_stride must be >= 1, got {position_stride}")
  if not 0.0 <= passkey_whole_rate <= 1.0:
    raise ValueError(f"passkey_whole_rate must be in [0, 1], got {passkey_whole_rate}")
  if passkey_depth not in PASSKEY_DEPTHS:
    raise ValueError(f"passkey_depth must be one of {PASSKEY_DEPTHS}, got {passkey_depth!r}")
  answers = mqar_loss == "answers"
  seq_len = rows["tokens"].shape[1]
  passkey_min = episode_min_len
  while episode_min_len and passkey_min < passkey.min_length(tokenizer, passkey_prompt):
    passkey_min *= 2

  def passkey_weighted(ex):
    # Every token, plus the answer weighted as much as the rest of the episode together.
    return (ex.tokens, 1.0 + ex.answer_weights() * (ex.tokens.size / ex.answer_len)) if answers else ex.tokens

  def passkey_tokens(n, s):
    depth = draw_depth(np.random.default_rng([s, 1]), n, passkey_depth)
    return passkey_weighted(passkey.passkey_example(tokenizer, n, depth, s, passkey_prompt))

  def mqar_tokens(n, s):
    ex = mqar.mqar_example(tokenizer, n, s)
    # Each answer weighs n / answers, so an MQAR episode carries the weight of n scored tokens, as a text row
    # does: with 0/1 weights its few answers were ~7% of the batch's loss and MQAR was never learned in the mix.
    return (ex.tokens, ex.answer_weights() * (n / ex.query_positions.size)) if answers else ex.tokens

  def one_row(tokens_and_weights):
    tokens, weights = tokens_and_weights if answers else (tokens_and_weights, None)
    row = {"tokens": tokens, "segment_ids": np.ones(seq_len, np.int32),
           "positions": np.arange(seq_len, dtype=np.int32)}
    return dict(row, loss_weights=weights) if answers else row

  def mix(index, row):
    rng = np.random.default_rng([seed, index, 0x9A55])
    u = rng.random() if passkey_rate or mqar_rate else 1.0
    # A whole-row prompt instead of a pack: its own generator, drawn only for passkey rows when the rate is
    # set, so the rows of a run without it are unchanged.
    if u < passkey_rate and episode_min_len and not (
        passkey_whole_rate and np.random.default_rng([seed, index, 0x3401]).random() < passkey_whole_rate):
      return retrieval.episodes_row(passkey_tokens, tokenizer, seq_len, int(rng.integers(2**31)), passkey_min,
                                    weighted=answers)
    if u < passkey_rate:
      depth, s = draw_depth(rng, seq_len, passkey_depth), int(rng.integers(2**31))
      return one_row(passkey_weighted(passkey.passkey_example(tokenizer, seq_len, depth, s, passkey_prompt)))
    if u < passkey_rate + mqar_rate and episode_min_len:
      return retrieval.episodes_row(mqar_tokens, tokenizer, seq_len, int(rng.integers(2**31)), episode_min_len,
                                    weighted=answers)
    if u < passkey_rate + mqar_rate:
      return one_row(mqar_tokens(seq_len, int(rng.integers(2**31))))
    return dict(row, loss_weights=np.ones(seq_len, np.float32)) if answers else row

  def mixed(index, row):
    row = mix(index, row)
    if position_stride == 1:
      return row
    rng = np.random.default_rng([seed, index, 0x5791])
    return dict(row, positions=jitter_positions(row["positions"], position_stride, rng))

  ds = grain.MapDataset.source(_Rows(rows)).shuffle(seed % 2**32).repeat().map_with_index(mixed)
  if shard_count > 1:
    ds = ds[shard_index::shard_count]
  return ds.batch(batch_size, drop_remainder=True)


def train_iterator(ds: grain.MapDataset, *, num_threads: int = 2, prefetch: int = 4):
  """A checkpointable iterator over `ds` (get_state() / set_state())."""
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def val_batches(rows: dict[str, np.ndarray], *, batch_size: int, num_batches: int) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` batches of validation rows in a fixed order (fewer if the split is small).

  The last batch is completed with all-padding rows (segment id 0), which carry no loss.
  """
  n = len(rows["tokens"])
  num_batches = max(1, min(num_batches, -(-n // batch_size)))
  out = []
  for b in range(num_batches):
    batch = {k: rows[k][b * batch_size:(b + 1) * batch_size] for k in ROW_KEYS}
    short = batch_size - len(batch["tokens"])
    if short:
      batch = {k: np.concatenate([v, np.zeros((short, v.shape[1]), np.int32)]) for k, v in batch.items()}
    out.append(batch)
  return out
