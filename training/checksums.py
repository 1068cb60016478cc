"""Checksum manifests of checkpoint steps: bytes flipped inside a file are found before anything is restored.

Orbax checks that a step's files exist and parse, not that their bytes are the ones it wrote: 400 flipped
bytes inside a params file (same size) restore as NaN weights. So once Orbax has finalized a step, process
0 writes STEP/checksums.json holding the size and SHA-256 of every file under the step directory, and every
reader (resume, init_from, eval, export, generate) checks the files of the items it reads against it first.
A step without a manifest (written before manifests existed, or a run killed between Orbax's finalize and
the seal) restores unverified; the reader says so in one log line.
"""

from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "checksums.json"
_VERSION = 1
_CHUNK = 1 << 22


class Mismatch(ValueError):
  """A file of a sealed step that is missing, resized or altered since the seal."""

  def __init__(self, path: str, cause: str):
    super().__init__(f"{path}: {cause}")
    self.path, self.cause = path, cause


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Every file under `step_dir` but the manifest, as sorted relative paths."""
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names]
  return sorted(f for f in out if f != MANIFEST)


def seal(step_dir: str):
  """Write `step_dir`/checksums.json for the finished step's files (atomically: a reader sees all or none)."""
  files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)), "sha256": _sha256(os.path.join(step_dir, rel))}
           for rel in _files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"version": _VERSION, "algorithm": "sha256", "files": files}, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify(step_dir: str, items) -> bool:
  """Check the files under `step_dir`/ITEM for each of `items` against the step's manifest.

  Returns False when the step has no manifest (nothing to check against), True when every file matches.
  Raises Mismatch naming the first file that is missing, has another size or another SHA-256, and
  Mismatch naming the manifest itself when it does not parse.
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise Mismatch(path, f"unreadable checksum manifest ({type(e).__name__}: {e})") from None
  prefixes = tuple(item + os.sep for item in items)
  for rel, want in sorted(files.items()):
    if not rel.startswith(prefixes):
      continue
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      raise Mismatch(full, "missing (listed in checksums.json)")
    size = os.path.getsize(full)
    if size != want["size"]:
      raise Mismatch(full, f"{size} bytes, but {want['size']} when the checkpoint was written")
    if _sha256(full) != want["sha256"]:
      raise Mismatch(full, "checksum mismatch: its bytes changed since the checkpoint was written (same size)")
  return True
