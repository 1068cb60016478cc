"""Text corpora read from disk, and the deterministic document-level train/validation split.

The built-in corpus is the installed Python standard library's own source: present on every machine with
Python, nothing downloaded, and made of real, long, structured documents (median ~10 KB, many > 100 KB),
which is what a long-context model needs to learn anything beyond local n-grams.

Besides plain text files (one document each), a corpus may hold files of many documents, read streaming
(line by line, Parquet row group by row group) rather than whole: `.jsonl` (one JSON object a line, the
document in its `text_field`), `.jsonl.gz`, and `.parquet` (the `text_field` column, through pyarrow).
Their row-th document is named "path#row" (the line index of a jsonl file, blank lines counted).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import logging
import os
import sysconfig
import zlib

BUILTIN = "builtin:stdlib"
BAD_FILES = ("error", "skip")  # what load_documents does with a file it cannot read as text
# What reading a damaged or mislabelled file raises: OSError (unreadable, gzip.BadGzipFile), EOFError and
# zlib.error (truncated or corrupt gzip), ValueError (UnicodeDecodeError, pyarrow's ArrowInvalid, ours).
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Document:
  name: str  # stable across machines: the path relative to its corpus root
  text: str


def stdlib_root() -> str:
  """The directory holding the installed standard library's .py files (os.py lives there)."""
  return sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__)


def _stdlib_files() -> list[tuple[str, str]]:
  """(name, path) of every standard-library .py file, third-party site-packages excluded."""
  root = stdlib_root()
  out = []
  for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, root)
    if not {"site-packages", "dist-packages"} & set(rel.split(os.sep)):
      out.append(("stdlib:" + document_name(rel), path))
  if not out:
    raise ValueError(f"the built-in corpus found no .py files under the standard library at {root!r}")
  return out


def stdlib_documents() -> list[Document]:
  """Every .py file of the standard library, sorted by name."""
  return load_documents(BUILTIN)


# Bytes that text in any 8-bit or UTF-8 encoding does not hold (C0 controls other than tab, newlines, form
# feed and escape): like git and grep, a file with a NUL is binary; other controls count past 1% of bytes.
_CONTROL = bytes(sorted(set(range(32)) - {9, 10, 11, 12, 13, 27}))


def _read(path: str) -> str:
  """A plain text file's text, decoded as UTF-8 with replacement characters (a Latin-1 or KOI8-R file of
  the standard library keeps its ASCII). Binary data (an archive, an image, a checkpoint shard) raises
  rather than training on noise."""
  with open(path, "rb") as f:
    data = f.read()
  controls = len(data) - len(data.translate(None, _CONTROL))
  if b"\0" in data or controls * 100 > len(data):
    what = "NUL bytes" if b"\0" in data else f"{controls} control bytes in {len(data)}"
    raise ValueError(f"corpus file {path!r} is not text: it holds {what} (a binary file?)")
  return data.decode("utf-8", errors="replace")


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIX = ".parquet"


def _is_multi(path: str) -> bool:
  return path.endswith(JSONL_SUFFIXES + (PARQUET_SUFFIX,))


def _jsonl_lines(path: str):
  """(line index, line) of a .jsonl or .jsonl.gz file, streaming; blank lines skipped (but counted)."""
  with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
    for i, line in enumerate(f):
      if line.strip():
        yield i, line


def _parquet_file(path: str, text_field: str):
  import pyarrow.parquet as pq  # only Parquet corpora need pyarrow

  pf = pq.ParquetFile(path)
  if text_field not in pf.schema_arrow.names:
    raise ValueError(f"corpus file {path!r} has no column text_field={text_field!r} (columns: "
                     f"{pf.schema_arrow.names})")
  return pf


def _rows(path: str, text_field: str) -> list[int]:
  """Row indices of the documents in a multi-document file (a first, cheap pass: no text kept)."""
  if path.endswith(PARQUET_SUFFIX):
    return list(range(_parquet_file(path, text_field).metadata.num_rows))
  return [i for i, _ in _jsonl_lines(path)]


def _texts(path: str, text_field: str, wanted: set[int]):
  """(row, text) of the wanted rows of a multi-document file, streaming."""
  if path.endswith(PARQUET_SUFFIX):
    row = 0
    for batch in _parquet_file(path, text_field).iter_batches(columns=[text_field], batch_size=1024):
      for text in batch.column(0).to_pylist():
        if row in wanted:
          if not isinstance(text, str):
            raise ValueError(f"corpus file {path!r} row {row}: column {text_field!r} holds {text!r}, not a string")
          yield row, text
        row += 1
    return
  for i, line in _jsonl_lines(path):
    if i in wanted:
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"corpus file {path!r} line {i + 1} is not valid JSON: {e}") from None
      text = obj.get(text_field) if isinstance(obj, dict) else None
      if not isinstance(text, str):
        raise ValueError(f"corpus file {path!r} line {i + 1} has no string field text_field={text_field!r}")
      yield i, text


def document_name(relative_path: str, row: int | None = None) -> str:
  """A document's identity: its path relative to its corpus root ("/"-separated), plus "#ROW" for the
  row-th document of a file that holds many (one per line or per table row).

  The split, the max_documents subset and the shuffle all key on this name, so they are the same wherever
  the corpus lies: copying or moving the corpus folder changes nothing.
  """
  name = relative_path.replace(os.sep, "/")
  return name if row is None else f"{name}#{row}"


def _root(source: str) -> str:
  """The corpus root of a source: the directory itself, a glob's leading directories without wildcards,
  or a single file's directory."""
  if os.path.isdir(source):
    return source
  if glob.has_magic(source):
    parts = source.split(os.sep)
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return os.sep.join(parts[:fixed]) or ("." if not os.path.isabs(source) else os.sep)
  return os.path.dirname(source) or "."


def _source_files(source: str) -> list[str]:
  source = os.path.expanduser(source)
  if os.path.isdir(source):
    paths = [p for p in glob.glob(os.path.join(source, "**", "*"), recursive=True) if os.path.isfile(p)]
  elif glob.has_magic(source):
    paths = [p for p in glob.glob(source, recursive=True) if os.path.isfile(p)]
  elif os.path.isfile(source):
    paths = [source]
  else:
    raise ValueError(f"corpus path does not exist: {source!r}")
  if not paths:
    raise ValueError(f"corpus source {source!r} matches no files")
  return paths


def load_documents(sources: tuple[str, ...] | list[str] | str, max_documents: int = 0,
                   text_field: str = "text", bad_files: str = "error") -> list[Document]:
  """Read documents from `sources`: file paths, directories (all files below), globs, or "builtin:stdlib".

  A .jsonl / .jsonl.gz / .parquet file holds one document per line / row, its text in `text_field`; any
  other file is one UTF-8 text document.

  Every source must match at least one file; a source that matches nothing raises ValueError naming it.
  Documents are named by `document_name` (relative to their source's root); two different files with one
  name (two sources holding the same relative path) raise ValueError naming both. `max_documents` > 0
  keeps that many, chosen by a hash of their names (the same subset on every machine and for every seed),
  before anything is read. Documents come back sorted by name, so the result does not depend on the file
  system's order or on where the corpus lies.

  A file that cannot be read as what its name says (binary data in a text file, a .jsonl.gz that is not
  gzip, a .parquet that is not Parquet, a line that is not JSON) raises ValueError naming the file and the
  reason with `bad_files="error"`; with "skip" its documents are left out and counted in one warning.
  """
  if bad_files not in BAD_FILES:
    raise ValueError(f"bad_files must be one of {BAD_FILES}, got {bad_files!r}")
  if isinstance(sources, str):
    sources = (sources,)
  if not sources:
    raise ValueError("corpus must name at least one source, got an empty list")
  files: dict[str, str] = {}
  for source in sources:
    if source == BUILTIN:
      found = _stdlib_files()
    else:
      root = _root(os.path.expanduser(source))
      found = [(document_name(os.path.relpath(p, root)), p) for p in _source_files(source)]
    for name, path in found:
      if name in files and not os.path.samefile(files[name], path):
        raise ValueError(f"corpus: two files have the document name {name!r} (the path relative to their "
                         f"source): {files[name]!r} and {path!r}; rename one or list a common parent folder")
      files[name] = path
  skipped: list[str] = []

  def read(path: str, fn, *args):
    """fn(*args); a read error names `path` and raises, or (bad_files="skip") is counted and gives None."""
    try:
      return fn(*args)
    except _READ_ERRORS as e:
      reason = str(e) if str(e).startswith("corpus file ") else f"corpus file {path!r} cannot be read: {e}"
      if bad_files == "error":
        raise ValueError(reason) from None
      skipped.append(reason)
      return None

  # (document name -> (path, row or None)): a multi-document file contributes one name per row.
  where: dict[str, tuple[str, int | None]] = {}
  for name, path in files.items():
    if not _is_multi(path):
      where[name] = (path, None)
    elif (rows := read(path, _rows, path, text_field)) is not None:
      where.update((document_name(name, row), (path, row)) for row in rows)
  names = sorted(where)
  if max_documents:
    names = sorted(sorted(names, key=lambda n: name_hash("subset:" + n))[:max_documents])
  texts, wanted = {}, {}
  for n in names:
    path, row = where[n]
    if row is None:
      if (text := read(path, _read, path)) is not None:
        texts[n] = text
    else:
      wanted.setdefault(path, {})[row] = n
  for path, rows in wanted.items():
    for row, text in read(path, lambda: list(_texts(path, text_field, set(rows)))) or ():
      texts[rows[row]] = text
  if skipped:
    _log.warning("corpus: skipped %d unreadable file(s) (data.bad_files='skip'); the first: %s", len(skipped),
                 skipped[0])
  return [Document(n, texts[n]) for n in names if n in texts]


def name_hash(name: str) -> float:
  """A stable number in [0, 1) per document name (the same on every machine and in every run)."""
  h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
  return h / 2**64


def is_validation(name: str, val_fraction: float) -> bool:
  """Whether document `name` is held out: by its hash, so the split does not move when documents are
  added or removed."""
  return name_hash(name) < val_fraction


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
  """(train, validation) by `is_validation`; a small corpus whose hashes put no document in validation
  gives it the document with the lowest hash, so both splits are non-empty."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  if len(docs) < 2:
    raise ValueError(f"a train/validation split needs at least 2 documents, got {len(docs)}")
  held_out = {d.name for d in docs if is_validation(d.name, val_fraction)}
  if not held_out:
    held_out = {min(docs, key=lambda d: name_hash(d.name)).name}
  if len(held_out) == len(docs):
    held_out.discard(max(docs, key=lambda d: name_hash(d.name)).name)
  return [d for d in docs if d.name not in held_out], [d for d in docs if d.name in held_out]
