"""Perplexity and bits per byte of a causal LM on held-out documents, as a function of the context length.

Protocol (the long-document perplexity of Position Interpolation, Chen et al., arXiv 2306.15595, Sec. 3.2,
with non-overlapping windows): the held-out documents (train.py's validation split) with at least
max(lengths) tokens are cut to their first max(lengths) tokens; at length L each is split into
max(lengths) / L non-overlapping windows, each read from position 0. Every length therefore scores
exactly the same tokens, and only the context available to them changes. Each window's first token has
no target. Bits per byte divide the summed loss (in bits) by the UTF-8 bytes of the scored tokens.

`validation_loss` recomputes train.py's own validation number (packed validation rows at the training
length, the first num_val_batches batches) so a restored checkpoint can be checked against its log.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import data as data_lib
from data import corpus as corpus_lib
from data.tokenizer import NUM_BYTES, SPECIAL_TOKENS
from training import loss as loss_lib
from training.config import TrainConfig
from training.targets import lm_targets

_log = logging.getLogger(__name__)


def token_bytes(tokenizer) -> np.ndarray:
  """int [V]: UTF-8 bytes each id stands for (1 per byte id, 0 for special tokens, a piece's length)."""
  out = np.zeros(tokenizer.vocab_size, np.int64)
  out[:NUM_BYTES] = 1
  for i in range(NUM_BYTES + len(SPECIAL_TOKENS), tokenizer.vocab_size):
    out[i] = len(tokenizer.decode([i]).encode("utf-8"))
  return out


def make_scorer(model, *, chunk_tokens: int = 8192):
  """jit(tokens, positions, segment_ids, targets [B, T], weights [B, T]) -> (CE [B, T], argmax [B, T]).

  The trainer's cross-entropy (training.loss), `chunk_tokens` tokens at a time: no [B, T, V] logits, so
  scoring at 128K tokens needs only [chunk_tokens, V] of them (the value does not depend on the chunk).
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def score(state, tokens, positions, segment_ids, targets, weights):
    model = nnx.merge(graphdef, state)
    x, _ = model.features(tokens, positions=positions, segment_ids=segment_ids)  # [B, T, D]
    w, bias = model.head()
    return loss_lib.cross_entropy(x, w, bias, targets, weights, chunk_tokens=chunk_tokens, with_argmax=True)

  return lambda *args: jax.device_get(score(state, *args))


def validation_loss(model, config: TrainConfig, tokenizer) -> float:
  """train.py's validation loss (nats per token): the same rows, batches and target rule."""
  splits = data_lib.load_splits(config.data.corpus, tokenizer, seq_len=config.data.seq_len,
                                val_fraction=config.data.val_fraction, seed=config.seed,
                                max_documents=config.data.max_documents, text_field=config.data.text_field,
                                bad_files=config.data.bad_files)
  micro = config.data.batch_size // config.optim.grad_accum_steps
  score = make_scorer(model)
  ce_sum, count = 0.0, 0.0
  for batch in data_lib.val_batches(splits.val, batch_size=micro, num_batches=config.data.num_val_batches):
    batch, targets, weights = lm_targets({k: jnp.asarray(v) for k, v in batch.items()})
    ce, _ = score(batch["tokens"], batch["positions"], batch["segment_ids"], targets, weights)
    ce_sum, count = ce_sum + float(np.sum(ce, dtype=np.float64)), count + float(jnp.sum(weights))
  return ce_sum / max(count, 1.0)


def heldout_documents(config: TrainConfig, tokenizer, min_tokens: int, max_docs: int):
  """(up to `max_docs` token arrays of `min_tokens` tokens, the protocol used to get them).

  Validation documents (BOS + text + EOS) of at least `min_tokens` tokens, cut to it. Where none is that
  long (the built-in corpus's held-out files at 128K), the held-out documents are concatenated in their
  sorted order and cut into windows instead, and the protocol says so (it is stored with the results):
  the context then spans document boundaries, as in perplexity over a concatenated corpus. Where even the
  concatenation is too short because the run trained on a `data.max_documents` subset (the tiny configs'
  40 documents hold ~52K held-out tokens), the held-out documents of the whole corpus are scored instead
  (the split keys on each document's name alone, so they are held out for the subset too), and the
  protocol says that as well.
  """
  docs = corpus_lib.load_documents(config.data.corpus, config.data.max_documents, config.data.text_field,
                                   config.data.bad_files)
  train, val = corpus_lib.split_documents(docs, config.data.val_fraction)  # train.py's validation documents
  encoded = [tokenizer.encode(d.text, bos=True, eos=True) for d in val]
  where = ""
  if config.data.max_documents and sum(t.size for t in encoded) < min_tokens:
    subset_tokens = sum(t.size for t in encoded)
    everything = corpus_lib.load_documents(config.data.corpus, 0, config.data.text_field, config.data.bad_files)
    # The subset's own validation documents stay; any other document is held out by its name's hash,
    # unless the subset trained on it (split_documents gives a tiny subset's lone held-out pick back).
    trained, kept = {d.name for d in train}, {d.name for d in val}
    val = [d for d in everything if d.name in kept or (
        d.name not in trained and corpus_lib.is_validation(d.name, config.data.val_fraction))]
    encoded = [tokenizer.encode(d.text, bos=True, eos=True) for d in val]
    _log.warning("the data.max_documents=%d subset holds %d held-out tokens, fewer than %d: scoring the %d "
                 "held-out documents of the whole corpus", config.data.max_documents, subset_tokens,
                 min_tokens, len(val))
    where = (f" of the whole corpus (the training subset of data.max_documents={config.data.max_documents} "
             f"documents holds {subset_tokens} held-out tokens)")
  out = [t[:min_tokens] for t in encoded if t.size >= min_tokens][:max_docs]
  if out:
    return out, "non-overlapping windows over the same tokens" + (f" of held-out documents{where}" if where else "")
  stream = np.concatenate(encoded)
  if stream.size < min_tokens:
    raise ValueError(f"the held-out documents{where} have {stream.size} tokens in all, fewer than the "
                     f"longest evaluation length {min_tokens}; use shorter --lengths or a larger corpus")
  _log.warning("no held-out document has %d tokens: scoring windows of the %d concatenated held-out documents",
               min_tokens, len(encoded))
  n = min(max_docs, stream.size // min_tokens)
  return list(stream[:n * min_tokens].reshape(n, min_tokens)), (
      f"non-overlapping windows over the same tokens of the concatenated held-out documents{where} (none has "
      f"{min_tokens} tokens)")


def perplexity_vs_length(model, config: TrainConfig, tokenizer, lengths: list[int], *, max_docs: int = 16,
                         batch_tokens: int = 8192) -> dict:
  """{"lengths": [...], "loss": [...] (nats/token), "perplexity", "bits_per_byte", "tokens", "documents",
  "position_loss": {"bucket", "start", "loss"} (at the longest length, per bucket of positions)}."""
  if model.cfg.arch != "decoder":
    raise ValueError("the perplexity task needs a decoder checkpoint (arch='decoder'); use --tasks=mlm")
  lengths = sorted(set(lengths))
  if lengths[0] < 2:
    raise ValueError(f"lengths must be >= 2, got {lengths}")
  longest = lengths[-1]
  if any(longest % n for n in lengths):
    raise ValueError(f"every length must divide the longest one ({longest}) so all lengths score the same "
                     f"tokens; got lengths={lengths}")
  docs, protocol = heldout_documents(config, tokenizer, longest, max_docs)
  docs = np.stack(docs)  # [D, longest]
  nbytes = token_bytes(tokenizer)
  score = make_scorer(model)
  result = {"lengths": lengths, "loss": [], "perplexity": [], "bits_per_byte": [], "tokens": [],
            "documents": len(docs), "protocol": protocol}
  for n in lengths:
    windows = docs.reshape(-1, n)  # [D * longest / n, n]
    rows = min(len(windows), max(1, batch_tokens // n))
    ce_sum, count, byte_count = 0.0, 0, 0
    ce_pos, count_pos = np.zeros(n), np.zeros(n)  # [n]: summed over windows, per position in the window
    for i in range(0, len(windows), rows):
      w = windows[i:i + rows]
      # The trainer's LM rule on one-document windows: position t predicts t + 1, the last has no target.
      _, targets, weights = lm_targets({"tokens": w, "segment_ids": np.ones_like(w)})
      targets, weights = np.asarray(targets), np.asarray(weights)
      byte_count += int(nbytes[w[:, 1:]].sum())
      if len(w) < rows:  # pad the last batch with unweighted rows: one compiled shape per length
        pad = rows - len(w)
        w, targets = np.pad(w, ((0, pad), (0, 0))), np.pad(targets, ((0, pad), (0, 0)))
        weights = np.pad(weights, ((0, pad), (0, 0)))
      ce, _ = score(w, np.broadcast_to(np.arange(n, dtype=np.int32), w.shape), np.ones_like(w), targets,
                    weights)
      ce_sum += float(np.sum(ce, dtype=np.float64))
      count += int(weights.sum())
      ce_pos, count_pos = ce_pos + ce.sum(axis=0, dtype=np.float64), count_pos + weights.sum(axis=0)
    loss = ce_sum / count
    result["loss"].append(loss)
    result["perplexity"].append(math.exp(loss))
    result["bits_per_byte"].append(ce_sum / math.log(2) / max(byte_count, 1))
    result["tokens"].append(count)
  # At the longest length: the loss per position bucket (of the shortest length), where a rule that does
  # not extend shows its failure undiluted by the early positions every window also has.
  bucket = lengths[0]
  result["position_loss"] = {"bucket": bucket, "start": list(range(0, longest, bucket)),
                             "loss": (ce_pos.reshape(-1, bucket).sum(1) / count_pos.reshape(-1, bucket).sum(1)).tolist()}
  return result
