"""The command-line entry points beside train.py (export.py, generate.py, configs.sweep, python -m eval): a
healthy run prints its result without library warnings, and a user error is one line on stderr, exit 2."""

import os
import subprocess
import sys

import pytest

from test_train import ROOT, compilation_cache_dir, tiny  # noqa: F401  (the cache fixture)
from training import train_and_evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A decoder_tiny:tiny run of 2 steps (all GLOBAL layers, no q/k/v bias: Llama or Mistral, not Qwen2)."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  train_and_evaluate(tiny(), str(workdir))
  return workdir


def _start(*argv):
  return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: dict) -> dict:
  """{name: (returncode, stdout, stderr)}; the processes run side by side (each start imports jax)."""
  done = {}
  for name, p in procs.items():
    out, err = p.communicate(timeout=300)
    done[name] = (p.returncode, out, err)
  return done


def test_healthy_commands_print_their_result_and_no_warnings(run, tmp_path):
  done = _finish({
      "generate": _start("generate.py", f"--workdir={run}", "--prompt=def main(", "--max_new_tokens=8"),
      "eval": _start("-m", "eval", f"--workdir={run}", "--tasks=perplexity", "--lengths=32", "--ppl_documents=1"),
      "export": _start("export.py", f"--workdir={run}", f"--out={tmp_path / 'hf'}")})
  for name, (rc, out, err) in done.items():
    assert rc == 0, (name, err[-3000:])
    noise = [line for line in err.splitlines() if line[:1] in "WE" or "Traceback" in line]
    assert not noise, (name, noise)  # Orbax's read-only and unrestored-item warnings are gone
  rc, out, _ = done["generate"]
  assert out.startswith("def main(") and len(out.rstrip("\n")) > len("def main(")
  assert "validation loss" in done["eval"][1] and "nan" not in done["eval"][1].lower()
  assert f"exported step 2 of {run} as LlamaForCausalLM" in done["export"][1]
  assert os.path.isfile(tmp_path / "hf" / "config.json")


def test_user_errors_are_one_line_with_exit_status_2(run, tmp_path):
  cases = {
      "sweep": (["-m", "configs.sweep", "--config=configs/demo.py", f"--workdir={tmp_path / 's'}", "--dry_run"],
                "configs/demo.py defines no get_sweep()"),
      "refused export": (["export.py", f"--workdir={run}", f"--out={tmp_path / 'q'}", "--family=qwen2"],
                         "cannot export qkv_bias=False"),
      "no workdir": (["export.py", f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'x'}"],
                     "has no checkpoints directory"),
      "bad step": (["generate.py", f"--workdir={run}", "--prompt=x", "--step=7"],
                   "step=7 is not a checkpoint of"),
      "no prompt": (["generate.py", f"--workdir={run}"], "Flag --prompt must have a value"),
      "library": (["-m", "models.generate"], "python generate.py --workdir=DIR --prompt=TEXT"),
  }
  done = _finish({name: _start(*argv) for name, (argv, _) in cases.items()})
  for name, (rc, out, err) in done.items():
    # Python's runpy warns (one line) that models/__init__ imported models.generate before running it.
    lines = [line for line in err.splitlines() if line.strip() and "RuntimeWarning" not in line]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, err[-3000:])
    assert cases[name][1] in lines[0], (name, lines[0])
  assert not (tmp_path / "q").exists() and not (tmp_path / "s").exists()
