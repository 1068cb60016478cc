"""One owner per workdir: an exclusive lock file holding the holder's host, pid and start time.

Two train.py runs on one workdir would overwrite each other's checkpoints and log every step twice, so the
second refuses at once, naming the holder. The lock is an flock(2) on DIR/train.lock, which the kernel
drops when the holder dies however it dies (kill -9 included); a lock file left behind by a dead holder is
taken over with a warning naming it. Only process 0 of a multi-host run holds the lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket

_log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def check_writable(workdir: str):
  """Raise ValueError unless `workdir` is (or can be created as) a writable directory; creates nothing."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"workdir={workdir!r} cannot be created: {existing!r} is not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is not writable" if existing == path else f"cannot be created: {existing!r} is not writable"
    raise ValueError(f"workdir={workdir!r} {what} (read-only file system or permissions)")


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('start')}"
          if holder else "a run whose lock file is empty")


class WorkdirLock:
  """`acquire()` takes DIR/train.lock or raises WorkdirLockedError naming the holder; `release()` (also
  reached through the context manager) removes it."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self):
    while self._fd is None:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise WorkdirLockedError(
            f"workdir {os.path.dirname(self.path)!r} is in use by {_describe(holder)} (lock file "
            f"{self.path}); wait for it to finish, stop it, or use another --workdir") from None
      try:
        same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same_file = False
      if not same_file:  # the previous holder removed the file between our open and our flock: retry
        os.close(fd)
        continue
      previous = _read(fd)
      if previous:
        _log.warning("workdir %s: taking over the stale lock of %s (that process is gone)",
                     os.path.dirname(self.path), _describe(previous))
      me = {"host": socket.gethostname(), "pid": os.getpid(),
            "start": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
      os.fsync(fd)
      self._fd = fd

  def release(self):
    if self._fd is None:
      return
    try:
      os.remove(self.path)  # while still locked, so nobody takes over a file that is about to vanish
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def _read(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, UnicodeDecodeError):
    return {}
