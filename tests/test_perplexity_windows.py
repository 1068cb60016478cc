"""eval.perplexity.heldout_documents at a length no held-out document reaches (128K on the built-in
corpus): windows of the concatenated held-out documents, and the protocol says so."""

import re

import numpy as np
import pytest

from configs import decoder_tiny
from data import corpus as corpus_lib
from data.tokenizer import ByteTokenizer
from eval.perplexity import heldout_documents
from training import from_config_dict


def _corpus(folder, texts, max_documents):
  """(the tiny config on a corpus of one file per text, the byte tokenizer)."""
  for i, text in enumerate(texts):
    (folder / f"doc{i:02d}.txt").write_text(text)
  c = decoder_tiny.get_config("tiny")
  c.data.update(corpus=(str(folder),), max_documents=max_documents, val_fraction=0.5)
  return from_config_dict(c), ByteTokenizer()


def test_long_windows_come_from_the_concatenated_heldout_documents(tmp_path):
  cfg, tok = _corpus(tmp_path, [f"document {i} " * (20 + i) for i in range(6)], 0)
  short, protocol = heldout_documents(cfg, tok, 50, max_docs=2)
  assert len(short) == 2 and "concatenated" not in protocol
  windows, protocol = heldout_documents(cfg, tok, 400, max_docs=8)
  assert "concatenated" in protocol and all(w.shape == (400,) for w in windows)
  assert np.sum([w == tok.bos_id for w in windows]) >= 2  # windows span document boundaries
  with pytest.raises(ValueError, match="fewer than the longest evaluation length 100000"):
    heldout_documents(cfg, tok, 100_000, max_docs=1)


def test_a_small_subset_scores_the_heldout_documents_of_the_whole_corpus(tmp_path):
  # The tiny configs' 40-document subset holds ~52K held-out tokens, too few for 128K windows: eval then
  # reads the whole corpus's held-out documents (never one the subset trained on). The same at 1/100 scale.
  cfg, tok = _corpus(tmp_path, [f"<{i:02d}>" * (30 + i) for i in range(40)], 6)
  train, val = corpus_lib.split_documents(corpus_lib.load_documents(str(tmp_path), 6), 0.5)
  subset_tokens = sum(len(d.text) + 2 for d in val)
  length = subset_tokens + 100
  windows, protocol = heldout_documents(cfg, tok, length, max_docs=4)
  assert "whole corpus" in protocol and f"holds {subset_tokens} held-out tokens" in protocol
  assert windows and all(w.shape == (length,) for w in windows)
  seen = set(re.findall(r"<(\d\d)>", tok.decode(np.concatenate(windows).tolist())))
  assert {d.name[3:5] for d in val} <= seen  # the subset's own held-out documents come first (sorted)
  assert seen - {d.name[3:5] for d in val}  # and documents outside the subset fill the window
  assert not seen & {d.name[3:5] for d in train}
  assert seen <= {f"{i:02d}" for i in range(40) if corpus_lib.is_validation(f"doc{i:02d}.txt", 0.5)} | {
      d.name[3:5] for d in val}
  with pytest.raises(ValueError, match="of the whole corpus .* fewer than the longest evaluation length 100000"):
    heldout_documents(cfg, tok, 100_000, max_docs=1)
