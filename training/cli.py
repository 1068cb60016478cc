"""What every command-line entry point shares: a user error is one line on stderr and exit status 2.

Used by export.py, generate.py and configs/sweep.py: `cli.run(main)` in place of absl's `app.run(main)`.
A flag error (a missing required flag, a value that does not parse), a ValueError from the library (a
missing workdir, a step that is not a checkpoint, a damaged checkpoint, an export refusal) and an OSError
(an output folder that cannot be written) print `error: ...` in one line instead of a usage text or a
traceback under library log noise.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging


def fail(message: str):
  """Print `message` as one line on stderr and exit with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def run(main):
  """absl's app.run(main) with one-line errors; libraries (Orbax logs every file it reads) log at WARNING."""
  logging.set_verbosity(logging.WARNING)
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ValueError, OSError) as e:
    fail(str(e))
