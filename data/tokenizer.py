"""Tokenizers: byte-level (nothing to download), a longest-match vocabulary read from a JSON file, and a
Hugging Face tokenizer.json (a pretrained model's own, through the `tokenizers` library).

The byte tokenizer follows ByT5 (Xue et al., 2022, "ByT5: Towards a token-free future with pre-trained
byte-to-byte models"): every UTF-8 byte is a token, so any text round-trips exactly and no vocabulary file
is needed. Ids 0..255 are the bytes; the special tokens follow them.

The file tokenizer (`VocabTokenizer`) reads `{"tokens": ["def ", "self", ...]}` and encodes greedily with
the longest vocabulary entry at each position (the WordPiece rule of Wu et al., 2016, without the "##"
continuation marker), falling back to single bytes, so it too encodes every text losslessly.

`HFTokenizer` reads a tokenizer.json (or a model folder holding one) and takes its BOS/EOS/PAD/... ids from
the tokenizer_config.json beside it when there is one, else from the file's special added tokens by their
usual names (<s>, <|begin_of_text|>, </s>, <|endoftext|>, <pad>, [MASK], ...).
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


_SPECIAL_NAMES = {
    "bos": ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "[CLS]"),
    "eos": ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "[SEP]"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "mask": ("<mask>", "[MASK]"),
    "sep": ("<sep>", "[SEP]", "</s>"),
    "unk": ("<unk>", "[UNK]"),
}


class HFTokenizer:
  """A Hugging Face tokenizer.json through the `tokenizers` library, with the ByteTokenizer interface.

  Ids are the file's. Without a BOS token (GPT-2, Qwen) documents start with EOS, the separator those
  models were trained with; without a PAD token padding is EOS (padding never carries loss or attention).
  """

  def __init__(self, path: str):
    import tokenizers  # only a run with a tokenizer.json needs the library

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise ValueError(f"tokenizer file not found: tokenizer_path={path!r}")
    self.path, self.folder = file, os.path.dirname(file)
    self._tok = tokenizers.Tokenizer.from_file(file)
    with open(file, encoding="utf-8") as f:
      added = {t["content"]: t["id"] for t in json.load(f).get("added_tokens", []) if t.get("special")}
    named = {}
    config_path = os.path.join(self.folder, "tokenizer_config.json")
    if os.path.isfile(config_path):
      with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
      for role in _SPECIAL_NAMES:
        token = config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None:
          named[role] = self._tok.token_to_id(token)
    else:
      for role, names in _SPECIAL_NAMES.items():
        named[role] = next((added[n] for n in names if n in added), None)
    if named.get("eos") is None:
      raise ValueError(f"tokenizer {file!r} names no EOS token (looked for {_SPECIAL_NAMES['eos']} or "
                       "eos_token in tokenizer_config.json)")
    self.eos_id = named["eos"]
    self.bos_id = named["bos"] if named.get("bos") is not None else self.eos_id
    self.pad_id = named["pad"] if named.get("pad") is not None else self.eos_id
    self.sep_id, self.unk_id, self._mask_id = named.get("sep"), named.get("unk"), named.get("mask")

  @property
  def mask_id(self) -> int:
    if self._mask_id is None:
      raise ValueError(f"tokenizer {self.path!r} has no mask token, which masked-LM training needs")
    return self._mask_id

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def num_regular_tokens(self) -> int:
    """Ids below this are the model vocabulary; added (special) tokens come after it."""
    return self._tok.get_vocab_size(with_added_tokens=False)

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Text -> int32 ids [L] (the file's own post-processor is not applied: BOS/EOS only when asked)."""
    ids = np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)
    return _wrap(ids, self.bos_id if bos else None, self.eos_id if eos else None)

  def decode(self, ids) -> str:
    """Ids -> text, special tokens dropped."""
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


def _is_hf(path: str) -> bool:
  return os.path.basename(path) == "tokenizer.json" or os.path.isfile(os.path.join(path, "tokenizer.json"))


def _wrap(ids: np.ndarray, bos: int | None, eos: int | None) -> np.ndarray:
  parts = ([np.array([bos], np.int32)] if bos is not None else []) + [ids] + (
      [np.array([eos], np.int32)] if eos is not None else [])
  return np.concatenate(parts) if len(parts) > 1 else ids


def get_tokenizer(path: str | None = None):
  """The byte tokenizer; a Hugging Face tokenizer for a tokenizer.json or a folder holding one (e.g. an
  imported model's); else the JSON-vocabulary tokenizer for a file."""
  if not path:
    return ByteTokenizer()
  return HFTokenizer(path) if _is_hf(path) else VocabTokenizer(path)
