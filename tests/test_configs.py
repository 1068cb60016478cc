"""Every experiment file in configs/ parses, validates, and trains 2 steps with its `tiny` argument; the
sweep runner prints (dry run) and runs train.py command lines."""

import glob
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from configs import sweep
from training import from_config_dict, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A staged config spells its smoke run "<stage>,tiny" (configs/extend.py); every other config plain "tiny".
TINY_ARGS = {"extend.py": "base,tiny", "extend_gpu.py": "base,tiny"}
# extend_hf.py takes a Hugging Face model folder; tests/test_hf_export.py dry-runs it on one it builds.
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if "def get_config" in open(p).read() and not p.endswith("extend_hf.py"))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """A persistent compilation cache for this module (configs with equal shapes compile once)."""
  options = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
             "jax_persistent_cache_min_compile_time_secs": 0.0, "jax_persistent_cache_min_entry_size_bytes": 1}
  old = {k: getattr(jax.config, k) for k in options}
  for k, v in options.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def _load(path, arg=""):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_all_experiment_configs_are_present():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  assert {"demo", "decoder_tiny", "encoder_tiny", "modernbert_base", "modernbert_large", "decoder_125m",
          "decoder_1b"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p))
def test_config_full_size_validates(path):
  cfg = from_config_dict(_load(path))
  assert cfg.data.seq_len <= cfg.model.max_len
  # ml_collections cannot override a list from the command line (--config.model.window=64,0): tuples only.
  for arg in ("", TINY_ARGS.get(os.path.basename(path), "tiny")):
    todo = [("", _load(path, arg).to_dict())]
    while todo:
      prefix, d = todo.pop()
      for k, v in d.items():
        assert not isinstance(v, list), f"{os.path.basename(path)}:{arg} {prefix}{k} is a list"
        if isinstance(v, dict):
          todo.append((f"{prefix}{k}.", v))
  with pytest.raises(ValueError, match="huge"):
    _load(path, "huge")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p))
def test_config_tiny_trains_two_steps(path, tmp_path):
  c = _load(path, TINY_ARGS.get(os.path.basename(path), "tiny"))
  c.mesh.data = 1
  assert c.num_steps == 2
  result = train_and_evaluate(c, str(tmp_path))
  assert result["step"] == 2 and result["checkpoint"].endswith("checkpoints/2")
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert len(losses) == 2 and all(0 < l < 10 for l in losses)


def test_sweep_dry_run_prints_one_command_per_entry(tmp_path):
  out = subprocess.run([sys.executable, "-m", "configs.sweep", "--config=configs/decoder_125m.py:tiny",
                        f"--workdir={tmp_path}", "--dry_run"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                       capture_output=True, text=True, check=True).stdout.strip().splitlines()
  entries = sweep.load_sweep(os.path.join(ROOT, "configs", "decoder_125m.py"))
  assert len(out) == len(entries) == 6
  workdirs = set()
  for line, overrides in zip(out, entries):
    argv = shlex.split(line)
    assert argv[1].endswith("train.py") and "--config=configs/decoder_125m.py:tiny" in argv
    for k, v in overrides.items():
      assert f"--config.{k}={v}" in argv
    workdirs.add(next(a for a in argv if a.startswith("--workdir=")))
  assert len(workdirs) == 6
  assert not os.listdir(tmp_path)  # a dry run runs nothing


@pytest.mark.slow
def test_sweep_runs_each_entry_in_its_own_workdir(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="1")
  subprocess.run([sys.executable, "-m", "configs.sweep", "--config=configs/decoder_tiny.py:tiny",
                  f"--workdir={tmp_path}"], cwd=ROOT, env=env, check=True, capture_output=True)
  runs = sorted(os.listdir(tmp_path))
  assert runs == ["optim.learning_rate=0.001", "optim.learning_rate=0.003"]
  for run in runs:
    assert os.listdir(tmp_path / run / "checkpoints") == ["2"]
