"""Packing tokenized documents into fixed-length rows with segment ids and per-document positions.

Sequence packing as in T5 (Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", Sec. 3.1.2): documents are concatenated and cut into rows of `seq_len` tokens, so
no compute is spent on padding. Each row carries `segment_ids` (1, 2, ... per document piece, 0 for padding)
so attention never crosses documents, and `positions` that restart at 0 at every piece, so RoPE sees each
piece as a document of its own. A document longer than a row continues in the next row as a new piece.
"""

from __future__ import annotations

import numpy as np


def pack(documents: list[np.ndarray], seq_len: int, *, pad_id: int) -> dict[str, np.ndarray]:
  """Concatenate `documents` (int token arrays) and cut them into rows.

  Args:
    documents: token arrays, in the order they should be laid out.
    seq_len: row length T.
    pad_id: token filling the end of the last row.
  Returns:
    dict of int32 arrays [R, T]: "tokens", "segment_ids" (0 = padding), "positions" (within each piece).
  """
  if not isinstance(seq_len, int) or seq_len < 2:
    raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
  documents = [np.asarray(d, np.int32).reshape(-1) for d in documents]
  documents = [d for d in documents if d.size]
  if not documents:
    raise ValueError("pack() got no non-empty documents")
  tokens = np.concatenate(documents)  # [N]
  doc = np.repeat(np.arange(1, len(documents) + 1, dtype=np.int64), [d.size for d in documents])  # [N]
  rows = -(-tokens.size // seq_len)
  pad = rows * seq_len - tokens.size
  tokens = np.concatenate([tokens, np.full(pad, pad_id, np.int32)]).reshape(rows, seq_len)
  doc = np.concatenate([doc, np.zeros(pad, np.int64)]).reshape(rows, seq_len)
  # A piece starts at column 0 and wherever the document changes.
  starts = np.ones_like(doc, dtype=bool)
  starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
  segment_ids = np.cumsum(starts, axis=1).astype(np.int32)
  segment_ids[doc == 0] = 0
  col = np.broadcast_to(np.arange(seq_len), doc.shape)
  piece_start = np.maximum.accumulate(np.where(starts, col, 0), axis=1)
  positions = (col - piece_start).astype(np.int32)
  positions[doc == 0] = 0
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
