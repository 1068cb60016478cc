"""Tokenizers: byte-level (nothing to download) and a longest-match vocabulary read from a JSON file.

The byte tokenizer follows ByT5 (Xue et al., 2022, "ByT5: Towards a token-free future with pre-trained
byte-to-byte models"): every UTF-8 byte is a token, so any text round-trips exactly and no vocabulary file
is needed. Ids 0..255 are the bytes; the special tokens follow them.

The file tokenizer (`VocabTokenizer`) reads `{"tokens": ["def ", "self", ...]}` and encodes greedily with
the longest vocabulary entry at each position (the WordPiece rule of Wu et al., 2016, without the "##"
continuation marker), falling back to single bytes, so it too encodes every text losslessly.
"""

from __future__ import annotations

import json
import os

import numpy as np

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>", "<sep>", "<unk>")
NUM_BYTES = 256


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then PAD, BOS, EOS, MASK, SEP, UNK."""

  def __init__(self):
    self._special = {name: NUM_BYTES + i for i, name in enumerate(SPECIAL_TOKENS)}
    self.pad_id = self._special["<pad>"]
    self.bos_id = self._special["<bos>"]
    self.eos_id = self._special["<eos>"]
    self.mask_id = self._special["<mask>"]
    self.sep_id = self._special["<sep>"]
    self.unk_id = self._special["<unk>"]

  @property
  def vocab_size(self) -> int:
    return NUM_BYTES + len(SPECIAL_TOKENS)

  @property
  def num_regular_tokens(self) -> int:
    """Ids below this are ordinary text tokens (MLM's 10% random replacement draws from them)."""
    return NUM_BYTES

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Text -> int32 ids [L] (plus BOS/EOS when asked)."""
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
    return _wrap(ids, self.bos_id if bos else None, self.eos_id if eos else None)

  def decode(self, ids) -> str:
    """Ids -> text; special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    return bytes(int(i) for i in ids if 0 <= i < NUM_BYTES).decode("utf-8", errors="replace")


class VocabTokenizer(ByteTokenizer):
  """Greedy longest-match over a JSON vocabulary of strings, with byte fallback.

  Ids: 0..255 bytes, then the special tokens, then the file's tokens in file order.
  """

  def __init__(self, path: str):
    super().__init__()
    if not os.path.isfile(path):
      raise ValueError(f"tokenizer file not found: tokenizer_path={path!r}")
    with open(path, encoding="utf-8") as f:
      try:
        spec = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer file {path!r} is not valid JSON: {e}") from e
    tokens = spec.get("tokens") if isinstance(spec, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
      raise ValueError(f"tokenizer file {path!r} must hold {{\"tokens\": [non-empty strings]}}")
    self.path = path
    first = NUM_BYTES + len(SPECIAL_TOKENS)
    self._pieces = [t.encode("utf-8") for t in tokens]
    # Multi-byte pieces only: single bytes already have their own ids.
    self._piece_ids = {p: first + i for i, p in enumerate(self._pieces) if len(p) > 1}
    self._max_len = max((len(p) for p in self._piece_ids), default=1)

  @property
  def vocab_size(self) -> int:
    return NUM_BYTES + len(SPECIAL_TOKENS) + len(self._pieces)

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> np.ndarray:
    data = text.encode("utf-8")
    out, i = [], 0
    while i < len(data):
      for n in range(min(self._max_len, len(data) - i), 1, -1):
        piece_id = self._piece_ids.get(data[i:i + n])
        if piece_id is not None:
          out.append(piece_id)
          i += n
          break
      else:
        out.append(data[i])
        i += 1
    return _wrap(np.asarray(out, np.int32), self.bos_id if bos else None, self.eos_id if eos else None)

  def decode(self, ids) -> str:
    first = NUM_BYTES + len(SPECIAL_TOKENS)
    chunks = []
    for i in np.asarray(ids).reshape(-1):
      i = int(i)
      if 0 <= i < NUM_BYTES:
        chunks.append(bytes([i]))
      elif first <= i < self.vocab_size:
        chunks.append(self._pieces[i - first])
    return b"".join(chunks).decode("utf-8", errors="replace")


def _wrap(ids: np.ndarray, bos: int | None, eos: int | None) -> np.ndarray:
  parts = ([np.array([bos], np.int32)] if bos is not None else []) + [ids] + (
      [np.array([eos], np.int32)] if eos is not None else [])
  return np.concatenate(parts) if len(parts) > 1 else ids


def get_tokenizer(path: str | None = None) -> ByteTokenizer:
  """The byte tokenizer, or the JSON-vocabulary tokenizer when `path` names a file."""
  return VocabTokenizer(path) if path else ByteTokenizer()
