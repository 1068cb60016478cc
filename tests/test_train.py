"""End-to-end tests of train.py / training/: exact resume, SIGTERM, kill -9 mid-save, max_to_keep, mesh
equivalence, restore across device counts, NaN guard, gradient accumulation, init_from, errors, and the
loss falling on the real corpus. Tiny models; the dense reference attention keeps compiles short."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from configs import decoder_tiny
from training import checkpoint, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """A persistent compilation cache for this module: runs that share shapes compile once."""
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  old = {k: getattr(jax.config, k) for k in CACHE_OPTIONS}
  for k, v in CACHE_OPTIONS.items():
    jax.config.update(k, cache if v is None else v)
  compilation_cache.reset_cache()  # the cache is set up once per process: make it see the new directory
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # for the train.py subprocesses
  yield cache
  os.environ.pop("JAX_COMPILATION_CACHE_DIR")
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


CACHE_OPTIONS = {"jax_compilation_cache_dir": None, "jax_persistent_cache_min_compile_time_secs": 0.0,
                 "jax_persistent_cache_min_entry_size_bytes": 1}


def tiny(**overrides):
  """decoder_tiny:tiny with dotted-key overrides, e.g. tiny(**{"optim.grad_accum_steps": 2})."""
  c = decoder_tiny.get_config("tiny")
  c.model.attention_impl = "reference"
  c.mesh.data = 1  # one device unless a test asks for a mesh
  c.data.batch_size = 4
  c.update_from_flattened_dict(overrides)
  return c


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def saved_params(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "params"))


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_is_bitwise_identical_and_max_to_keep(tmp_path):
  common = {"num_steps": 20, "checkpoint.every": 5, "checkpoint.max_to_keep": 2, "eval_every": 10}
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  train_and_evaluate(tiny(**common), straight)
  first = train_and_evaluate(tiny(**common, max_steps_per_run=10), split)
  assert first["step"] == 10
  second = train_and_evaluate(tiny(**common), split)
  assert second["step"] == 20
  a, b = read_metrics(straight), read_metrics(split)
  assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 21))
  assert [m["loss"] for m in a] == [m["loss"] for m in b]
  assert [m.get("val_loss") for m in a] == [m.get("val_loss") for m in b]
  assert_trees_equal(saved_params(straight, 20), saved_params(split, 20))
  # max_to_keep=2 with saves every 5 steps: only 15 and 20 remain, and no temporary directories.
  assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == ["15", "20"]
  # The loss falls on the real corpus (stdlib sources) within 20 steps.
  losses = [m["loss"] for m in a]
  assert np.mean(losses[-5:]) < losses[0] - 1.0
  assert a[-1]["val_loss"] < a[9]["val_loss"] < losses[0]
  for key in ("grad_norm", "learning_rate", "tokens_per_sec", "step_time_s", "tflops_per_device", "mfu",
              "skipped_steps"):
    assert key in a[-1]


def _popen_train(workdir, *overrides):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config=configs/decoder_tiny.py:tiny",
         f"--workdir={workdir}", "--config.model.attention_impl=reference", "--config.mesh.data=1",
         "--config.data.batch_size=4", *overrides]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="1")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=240):
  t0 = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"train.py exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError("timed out waiting for train.py")
    time.sleep(0.002)


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return len(read_metrics(workdir)) if os.path.exists(path) else 0


def test_sigterm_saves_exits_zero_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _popen_train(workdir, "--config.num_steps=1000", "--config.checkpoint.every=1000")
  _wait_for(lambda: _logged_steps(workdir) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "stopped by SIGTERM at step" in out
  stopped = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
  assert stopped >= 3
  result = train_and_evaluate(tiny(num_steps=1000, max_steps_per_run=1), workdir)
  assert result["step"] == stopped + 1
  assert [m["step"] for m in read_metrics(workdir)] == list(range(1, stopped + 2))


def test_kill9_during_async_save_resumes_from_last_complete_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  ckpts = os.path.join(workdir, "checkpoints")
  proc = _popen_train(workdir, "--config.num_steps=1000", "--config.checkpoint.every=1",
                      "--config.checkpoint.max_to_keep=100")
  in_flight = lambda: os.path.isdir(ckpts) and any("tmp" in d for d in os.listdir(ckpts)) and any(
      d.isdigit() for d in os.listdir(ckpts))
  _wait_for(in_flight, proc)
  proc.kill()
  proc.wait()
  complete = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  result = train_and_evaluate(tiny(num_steps=1000, max_steps_per_run=1, **{"checkpoint.every": 1}), workdir)
  assert result["step"] == complete + 1
  assert not any("tmp" in d for d in os.listdir(ckpts))


def test_mesh_of_8_matches_1_device_and_restores_on_1(tmp_path):
  assert jax.device_count() == 8
  common = {"num_steps": 4, "max_steps_per_run": 3, "data.batch_size": 8}
  one = str(tmp_path / "one")
  eight = str(tmp_path / "eight")
  train_and_evaluate(tiny(**common), one)
  train_and_evaluate(tiny(**common, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}), eight)
  l1 = [m["loss"] for m in read_metrics(one)]
  l8 = [m["loss"] for m in read_metrics(eight)]
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  # The 8-device checkpoint (step 3) continues on 1 device, matching the 1-device run's step 4.
  train_and_evaluate(tiny(num_steps=4, **{"data.batch_size": 8}), eight)
  train_and_evaluate(tiny(num_steps=4, **{"data.batch_size": 8}), one)
  np.testing.assert_allclose(read_metrics(eight)[-1]["loss"], read_metrics(one)[-1]["loss"], rtol=1e-5)


def test_nan_is_skipped_counted_and_moments_untouched(tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny(num_steps=5, inject_nan_steps=(3,), **{"checkpoint.every": 1,
                                                                 "checkpoint.max_to_keep": 10}), workdir)
  m = read_metrics(workdir)
  assert [r["skipped_steps"] for r in m] == [0, 0, 1, 1, 1]
  assert m[2]["loss"] is None and all(r["loss"] is not None for r in m[3:])
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=checkpoint.ITEMS)
  s2 = mngr.restore(2, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                               train_state=ocp.args.StandardRestore()))
  s3 = mngr.restore(3, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                               train_state=ocp.args.StandardRestore()))
  assert_trees_equal(s2.params, s3.params)
  assert_trees_equal(s2.train_state["opt_state"], s3.train_state["opt_state"])
  assert int(s3.train_state["step"]) == 3 and int(s3.train_state["skipped_steps"]) == 1
  mngr.close()


def test_consecutive_nans_stop_with_a_clear_message(tmp_path):
  with pytest.raises(FloatingPointError, match="3 consecutive steps .*max_consecutive_skips=3"):
    train_and_evaluate(tiny(num_steps=6, inject_nan_steps=(2, 3, 4), max_consecutive_skips=3),
                       str(tmp_path / "run"))


def test_grad_accumulation_matches_one_batch(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  train_and_evaluate(tiny(num_steps=3), a)
  train_and_evaluate(tiny(num_steps=3, **{"optim.grad_accum_steps": 2}), b)
  np.testing.assert_allclose([m["loss"] for m in read_metrics(b)], [m["loss"] for m in read_metrics(a)],
                             rtol=1e-5)


def test_init_from_restores_params_and_refuses_other_shapes(tmp_path):
  src, dst, bad = str(tmp_path / "src"), str(tmp_path / "dst"), str(tmp_path / "bad")
  train_and_evaluate(tiny(num_steps=3), src)
  train_and_evaluate(tiny(num_steps=3, max_steps_per_run=1, init_from=src, seed=1), dst)
  # Starting from src's step-3 params (not seed 1's random init), dst's first loss is src's last or lower.
  first_dst = read_metrics(dst)[0]["loss"]
  assert first_dst < read_metrics(src)[0]["loss"] - 0.1
  with pytest.raises(ValueError, match=r"tensor 'blocks/0/mlp/w\w/kernel' has shape \(64, 128\) .* \(64, 96\)"):
    train_and_evaluate(tiny(num_steps=3, init_from=src, **{"model.mlp_dim": 96}), bad)


def test_errors_unknown_override_and_missing_corpus(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "train.py", "--config=configs/decoder_tiny.py:tiny",
                        f"--workdir={tmp_path}", "--config.optim.lr=3"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 2 and "unknown config key 'optim.lr'" in out.stderr
  with pytest.raises(ValueError, match="corpus path does not exist: .*no_such_dir"):
    train_and_evaluate(tiny(**{"data.corpus": (str(tmp_path / "no_such_dir"),)}), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"unknown config keys \['optim.lr'\]"):
    c = tiny().to_dict()
    c["optim"]["lr"] = 1.0
    train_and_evaluate(c, str(tmp_path / "run"))
  with pytest.raises(ValueError, match="config.data.seq_len=4096: exceeds model.max_len=128"):
    train_and_evaluate(tiny(**{"data.seq_len": 4096}), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"config.data.passkey_whole_rate=1.5: must be in \[0, 1\]"):
    train_and_evaluate(tiny(**{"data.passkey_whole_rate": 1.5}), str(tmp_path / "run"))
