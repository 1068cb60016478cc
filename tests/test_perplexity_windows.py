"""eval.perplexity.heldout_documents at a length no held-out document reaches (128K on the built-in
corpus): windows of the concatenated held-out documents, and the protocol says so."""

import numpy as np
import pytest

from configs import decoder_tiny
from data.tokenizer import ByteTokenizer
from eval.perplexity import heldout_documents
from training import from_config_dict


def test_long_windows_come_from_the_concatenated_heldout_documents(tmp_path):
  for i in range(6):
    (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * (20 + i))
  c = decoder_tiny.get_config("tiny")
  c.data.update(corpus=(str(tmp_path),), max_documents=0, val_fraction=0.5)
  cfg, tok = from_config_dict(c), ByteTokenizer()
  short, protocol = heldout_documents(cfg, tok, 50, max_docs=2)
  assert len(short) == 2 and "concatenated" not in protocol
  windows, protocol = heldout_documents(cfg, tok, 400, max_docs=8)
  assert "concatenated" in protocol and all(w.shape == (400,) for w in windows)
  assert np.sum([w == tok.bos_id for w in windows]) >= 2  # windows span document boundaries
  with pytest.raises(ValueError, match="fewer than the longest evaluation length 100000"):
    heldout_documents(cfg, tok, 100_000, max_docs=1)
