"""Text corpora read from disk, and the deterministic document-level train/validation split.

The built-in corpus is the installed Python standard library's own source: present on every machine with
Python, nothing downloaded, and made of real, long, structured documents (median ~10 KB, many > 100 KB),
which is what a long-context model needs to learn anything beyond local n-grams.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sysconfig

BUILTIN = "builtin:stdlib"


@dataclasses.dataclass(frozen=True)
class Document:
  name: str  # stable across machines: the path relative to its corpus root
  text: str


def stdlib_root() -> str:
  """The directory holding the installed standard library's .py files (os.py lives there)."""
  return sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__)


def stdlib_documents() -> list[Document]:
  """Every .py file of the standard library (third-party site-packages excluded), sorted by name."""
  root = stdlib_root()
  paths = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
  docs = []
  for path in sorted(paths):
    rel = os.path.relpath(path, root)
    if "site-packages" in rel.split(os.sep) or "dist-packages" in rel.split(os.sep):
      continue
    docs.append(Document(rel, _read(path)))
  if not docs:
    raise ValueError(f"the built-in corpus found no .py files under the standard library at {root!r}")
  return docs


def _read(path: str) -> str:
  with open(path, "rb") as f:
    return f.read().decode("utf-8", errors="replace")


def load_documents(sources: tuple[str, ...] | list[str] | str) -> list[Document]:
  """Read documents from `sources`: file paths, directories (all files below), globs, or "builtin:stdlib".

  Every source must match at least one file; a source that matches nothing raises ValueError naming it.
  Documents are returned sorted by name, so the result does not depend on the file system's order.
  """
  if isinstance(sources, str):
    sources = (sources,)
  if not sources:
    raise ValueError("corpus must name at least one source, got an empty list")
  docs: dict[str, Document] = {}
  for source in sources:
    if source == BUILTIN:
      for d in stdlib_documents():
        docs["stdlib:" + d.name] = d
      continue
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
    for p in paths:
      name = os.path.abspath(p)
      docs[name] = Document(name, _read(p))
  return [docs[k] for k in sorted(docs)]


def name_hash(name: str) -> float:
  """A stable number in [0, 1) per document name (the same on every machine and in every run)."""
  h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
  return h / 2**64


def is_validation(name: str, val_fraction: float) -> bool:
  """Whether document `name` is held out: by its hash, so the split does not move when documents are
  added or removed."""
  return name_hash(name) < val_fraction


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
  """(train, validation) by `is_validation`; both non-empty or ValueError."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  train = [d for d in docs if not is_validation(d.name, val_fraction)]
  val = [d for d in docs if is_validation(d.name, val_fraction)]
  if not train or not val:
    raise ValueError(f"val_fraction={val_fraction} splits {len(docs)} documents into {len(train)} train and "
                     f"{len(val)} validation documents; both must be non-empty (add documents or change it)")
  return train, val
