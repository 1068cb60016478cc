"""Reliability: each test turns one reproduction of issues 11 and 23 into a check. A workdir has one owner,
resume checks what it resumes, damaged checkpoints (truncated, or bytes flipped at the same size: checksums)
fall back, and bad input fails early in one line."""

import glob
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import attention
from attention import dsa
from attention.testing import random_qkv
from data import corpus, pipeline, tokenizer
from test_train import ROOT, compilation_cache_dir, read_metrics, tiny  # noqa: F401  (the cache fixture)
from training import checkpoint, checksums, from_config_dict, loop, restore, sharding, train_and_evaluate
from training import workdir as workdir_lib


def _write_corpus(root, n=12):
  (root / "sub").mkdir(parents=True)
  for i in range(n):
    folder = root / "sub" if i % 3 == 0 else root
    (folder / f"doc{i:02d}.txt").write_text(f"document {i} says " + "abc " * (10 + 7 * i))


def test_corpus_split_subset_and_shuffle_do_not_depend_on_where_it_lies(tmp_path):
  _write_corpus(tmp_path / "a")
  shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
  a, b = str(tmp_path / "a"), str(tmp_path / "elsewhere" / "b")
  assert [d.name for d in corpus.load_documents(a)][:2] == ["doc01.txt", "doc02.txt"]
  assert "sub/doc00.txt" in [d.name for d in corpus.load_documents(a)]
  tok = tokenizer.ByteTokenizer()
  for max_documents in (0, 7):
    sa = pipeline.load_splits([a], tok, seq_len=32, val_fraction=0.3, seed=3, max_documents=max_documents)
    sb = pipeline.load_splits([b], tok, seq_len=32, val_fraction=0.3, seed=3, max_documents=max_documents)
    assert (sa.num_train_documents, sa.num_val_documents) == (sb.num_train_documents, sb.num_val_documents)
    for part in ("train", "val"):
      for k in pipeline.ROW_KEYS:
        np.testing.assert_array_equal(getattr(sa, part)[k], getattr(sb, part)[k])
  # A glob's root is its leading directories without wildcards; a single file is named by its base name.
  assert {d.name for d in corpus.load_documents(a + "/*/*.txt")} == {"sub/doc00.txt", "sub/doc03.txt",
                                                                      "sub/doc06.txt", "sub/doc09.txt"}
  assert [d.name for d in corpus.load_documents(a + "/doc01.txt")] == ["doc01.txt"]
  assert corpus.document_name("x/y.jsonl", 4) == "x/y.jsonl#4"
  with pytest.raises(ValueError, match="two files have the document name 'doc01.txt'"):
    corpus.load_documents([a, b])


def test_corpus_of_empty_or_too_short_documents_is_an_error(tmp_path):
  for i in range(4):
    (tmp_path / f"empty{i}.txt").write_text("")
  tok = tokenizer.ByteTokenizer()
  with pytest.raises(ValueError, match=r"training documents hold 0 tokens of text .* fewer than 32"):
    pipeline.load_splits([str(tmp_path)], tok, seq_len=32, val_fraction=0.3, seed=0)
  for i in range(4):
    (tmp_path / f"empty{i}.txt").write_text("short")
  with pytest.raises(ValueError, match=r"training documents hold \d+ tokens of text"):
    pipeline.load_splits([str(tmp_path)], tok, seq_len=64, val_fraction=0.3, seed=0)
  assert pipeline.load_splits([str(tmp_path)], tok, seq_len=8, val_fraction=0.3, seed=0).num_val_documents


def test_attention_batch_zero_window_overflow_and_segment_dtype_fail_in_one_line():
  q, k, v, _ = random_qkv(0, 0, 8, 8, 2, 1, 8)
  for impl in [*attention.REGISTRY, "auto"]:
    with pytest.raises(ValueError, match=r"q: the batch size B must be >= 1, got q \(0, 8, 2, 8\)"):
      attention.attend(q, k, v, impl=impl)
  indices = jnp.zeros((0, 8, 4), jnp.int32)
  for impl in [*dsa.SPARSE_REGISTRY, "auto"]:
    with pytest.raises(ValueError, match="q: the batch size B must be >= 1"):
      attention.sparse_attend(q, k, v, indices, impl=impl)
  for impl in [*dsa.TOPK_REGISTRY, "auto"]:
    with pytest.raises(ValueError, match="q_idx: the batch size B must be >= 1"):
      attention.topk_indices(jnp.zeros((0, 8, 2, 4)), jnp.zeros((0, 8, 4)), jnp.zeros((0, 8, 2)), top_k=2,
                             impl=impl)
  with pytest.raises(ValueError, match=r"Mask.window sides must be <= 2\*\*31 - 1"):
    attention.Mask(window=(2**31, 0))
  q, k, v, _ = random_qkv(1, 2, 8, 8, 2, 1, 8)
  widest = attention.attend(q, k, v, mask=attention.Mask(window=(2**31 - 1, 0)), impl="xla")
  np.testing.assert_allclose(widest, attention.attend(q, k, v, mask=attention.Mask(causal=True),
                                                      impl="reference"), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"segment_ids must be an int array of shape \(2, 8\), got shape "
                                       r"\(2, 8\) dtype float32"):
    attention.attend(q, k, v, segment_ids=jnp.ones((2, 8), jnp.float32))


def _config(folder, **overrides):
  """decoder_tiny:tiny on the corpus in `folder`, one checkpoint per step."""
  return tiny(**{"data.corpus": (str(folder),), "checkpoint.every": 1, "num_steps": 2, **overrides})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(corpus folder, workdir) of a 2-step run on a small on-disk corpus with checkpoints 1 and 2."""
  root = tmp_path_factory.mktemp("base")
  _write_corpus(root / "corpus", n=16)
  train_and_evaluate(_config(root / "corpus"), str(root / "run"))
  return root / "corpus", root / "run"


def _copy_run(base, tmp_path, name="run"):
  shutil.copytree(base[1], tmp_path / name)
  return tmp_path / name


def _train_py(*args):
  return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(folder, workdir, *extra):
  return ["--config=configs/decoder_tiny.py:tiny", f"--workdir={workdir}", "--config.model.attention_impl=reference",
          "--config.mesh.data=1", "--config.data.batch_size=4", f"--config.data.corpus={folder}",
          "--config.checkpoint.every=1", *extra]


def test_a_second_run_on_a_workdir_refuses_at_once_and_a_stale_lock_is_taken_over(base, tmp_path, caplog):
  folder, _ = base
  run = _copy_run(base, tmp_path)
  first = _train_py(*_cli(folder, run, "--config.num_steps=4"))
  lock = run / workdir_lib.LOCK_NAME
  deadline = time.time() + 180
  while time.time() < deadline and first.poll() is None:
    if lock.exists() and lock.read_text().strip():
      break
    time.sleep(0.05)
  holder = json.loads(lock.read_text())
  assert holder["pid"] == first.pid and holder["host"] == socket.gethostname() and holder["start"]
  with pytest.raises(workdir_lib.WorkdirLockedError, match=f"in use by pid {first.pid} on host"):
    train_and_evaluate(_config(folder, num_steps=4, **{"optim.learning_rate": 3e-3}), str(run))
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-2000:]
  steps = [m["step"] for m in read_metrics(run) if "loss" in m]
  assert steps == [1, 2, 3, 4]  # each step once, all from the one run that held the lock
  assert not lock.exists()
  # kill -9 leaves the file but not the flock: the next run takes it over, naming the dead holder.
  dead = subprocess.Popen(["true"])
  dead.wait()
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start": "earlier"}))
  with caplog.at_level(logging.WARNING, logger="training"):
    assert train_and_evaluate(_config(folder, num_steps=4), str(run))["step"] == 4
  assert f"taking over the stale lock of pid {dead.pid}" in caplog.text
  assert not lock.exists()


def test_resume_compares_the_config_and_a_moved_corpus_is_the_same_data(base, tmp_path, caplog):
  folder, _ = base
  run = _copy_run(base, tmp_path)
  with pytest.raises(ValueError, match=r"changes the data order or the model \(data.batch_size: 4 -> 8, "
                                       r"model.mlp_dim: 128 -> 96, optim.learning_rate: 0.003 -> 0.01, "
                                       r"seed: 0 -> 1\); pass --config.allow_config_change=True"):
    train_and_evaluate(_config(folder, num_steps=3, seed=1, **{"data.batch_size": 8, "model.mlp_dim": 96,
                                                               "optim.learning_rate": 0.01}), str(run))
  edited = tmp_path / "edited"
  shutil.copytree(folder, edited)
  (edited / "doc05.txt").write_text("an edited document " * 20)
  with pytest.raises(ValueError, match=r"data \(packed rows\).*the corpus content changed"):
    train_and_evaluate(_config(edited), str(run))
  moved = tmp_path / "moved" / "corpus"
  shutil.copytree(folder, moved)
  with caplog.at_level(logging.INFO, logger="training"):
    assert train_and_evaluate(_config(moved, num_steps=3), str(run))["step"] == 3
  assert "config changes data.corpus" in caplog.text and "num_steps: 2 -> 3" in caplog.text
  train_and_evaluate(_config(moved, num_steps=4, seed=1, allow_config_change=True), str(run))
  notes = [m["config_changes"] for m in read_metrics(run) if "config_changes" in m]
  assert notes == [{"seed": [0, 1]}]  # only what needed allow_config_change; num_steps 3 -> 4 is logged
  assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2, 3, 4]


def _flip(path, n=400):
  """Invert `n` bytes in the middle of `path`, keeping its size (issue 23's silent corruption)."""
  with open(path, "r+b") as fh:
    data = bytearray(fh.read())
    middle = len(data) // 2 - n // 2
    data[middle:middle + n] = bytes(b ^ 0xFF for b in data[middle:middle + n])
    fh.seek(0)
    fh.write(data)


def _damage(step_dir, kind):
  """Damage checkpoint 2 of a run; returns a regex of the file (and cause) a diagnosis must name."""
  biggest = max(glob.glob(f"{step_dir}/params/ocdbt.process_0/d/*"), key=os.path.getsize)
  if kind == "truncated params":
    with open(biggest, "r+b") as fh:
      fh.truncate(100)
    return r"checkpoints/2/params/ocdbt.process_0/d/\w+: 100 bytes, but \d+ when the checkpoint was written"
  if kind == "flipped params":
    _flip(biggest)
    return r"checkpoints/2/params/ocdbt.process_0/d/\w+: checksum mismatch"
  if kind == "no params metadata":
    os.remove(f"{step_dir}/params/_METADATA")
    return r"checkpoints/2/params/_METADATA: missing"
  os.remove(f"{step_dir}/{checksums.MANIFEST}")  # a checkpoint from before checksums: Orbax's own errors
  with open(f"{step_dir}/data/metadata", "w") as fh:
    fh.write("{not json")
  return r"checkpoints/2/data/metadata: not valid JSON \(Expecting"


@pytest.mark.parametrize("kind", ["truncated params", "flipped params"])
def test_a_damaged_checkpoint_is_named_and_resume_falls_back_to_the_previous_one(base, tmp_path, caplog, kind):
  folder, _ = base
  run = _copy_run(base, tmp_path)
  where = _damage(run / "checkpoints" / "2", kind)
  with pytest.raises(ValueError, match="config.resume_step=5 is not a checkpoint of .* it has steps \\[1, 2\\]"):
    train_and_evaluate(_config(folder, resume_step=5), str(run))
  with pytest.raises(checkpoint.DamagedCheckpointError, match=f"checkpoint 2 is damaged: .*{where}"):
    train_and_evaluate(_config(folder, resume_step=2), str(run))
  with caplog.at_level(logging.WARNING, logger="training"):
    result = train_and_evaluate(_config(folder), str(run))
  assert result["step"] == 2 and np.isfinite(result["val_loss"])
  assert re.search(f"checkpoint 2 is damaged: {run}/{where}.*; falling back", caplog.text)
  assert os.listdir(run / "set_aside_checkpoints")[0].startswith("2-")  # kept for a post-mortem
  assert train_and_evaluate(_config(folder, resume_step=2), str(run))["step"] == 2  # the new step 2


@pytest.mark.parametrize("kind", ["truncated params", "flipped params", "no params metadata", "bad data json"])
def test_eval_names_the_damaged_file_and_falls_back(base, tmp_path, kind, caplog):
  run = _copy_run(base, tmp_path)
  where = _damage(run / "checkpoints" / "2", kind)
  if kind != "bad data json":  # eval reads no data item
    with pytest.raises(checkpoint.DamagedCheckpointError, match=f"checkpoint 2 is damaged: .*{where}") as e:
      restore.restore(str(run), 2)
    assert "overrides" not in str(e.value)
    with caplog.at_level(logging.WARNING, logger="training"):
      assert restore.restore(str(run)).step == 1
    assert re.search(f"checkpoint 2 is damaged: .*{where}.*; falling back", caplog.text)
  with pytest.raises(checkpoint.DamagedCheckpointError, match=where):
    train_and_evaluate(_config(base[0], resume_step=2), str(run))


def test_eval_cli_names_flipped_bytes_in_one_line_and_never_reports_nan(base, tmp_path):
  run = _copy_run(base, tmp_path)
  _damage(run / "checkpoints" / "2", "flipped params")
  procs = [subprocess.Popen([sys.executable, "-m", "eval", f"--workdir={run}", "--tasks=perplexity", "--lengths=32",
                             "--ppl_documents=1", *step], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for step in (["--step=2"], [])]
  (_, asked_err), (fallback_out, fallback_err) = [p.communicate(timeout=300) for p in procs]
  assert procs[0].returncode == 2 and asked_err.count("\n") == 1 and asked_err.startswith("error: "), asked_err
  assert re.search(r"checkpoint 2 is damaged: .*checkpoints/2/params/ocdbt.process_0/d/\w+: checksum mismatch",
                   asked_err)
  assert procs[1].returncode == 0, fallback_err[-2000:]
  warnings = [line for line in fallback_err.splitlines() if line.startswith(("W", "E"))]
  assert len(warnings) == 1 and "checkpoint 2 is damaged" in warnings[0] and "falling back" in warnings[0], warnings
  assert "nan" not in fallback_out.lower() and "validation loss" in fallback_out


def test_every_saved_step_is_sealed_and_a_step_without_a_manifest_restores_with_one_line(base, tmp_path, caplog):
  folder, workdir = base
  for step in (1, 2):
    assert checksums.verify(str(workdir / "checkpoints" / str(step)), checkpoint.ITEMS)
  # Synchronous saves with old steps deleted: the step kept is sealed too.
  sync = tmp_path / "sync"
  train_and_evaluate(_config(folder, num_steps=3, **{"checkpoint.async_save": False, "checkpoint.max_to_keep": 1}),
                     str(sync))
  assert sorted(os.listdir(sync / "checkpoints")) == ["3"]
  assert checksums.verify(str(sync / "checkpoints" / "3"), checkpoint.ITEMS)
  # A checkpoint from before checksums: restored unverified (one line), and a params file that no longer
  # decodes counts as damage. (Not flipped bytes: without a manifest, whether 400 inverted bytes decode to
  # NaN or fail to decode depends on where the middle of the largest file falls, which varies between
  # saves; inverted float32 bytes are usually finite. One full-suite run restored step 2 that way.)
  run = _copy_run(base, tmp_path)
  for step in (1, 2):
    os.remove(run / "checkpoints" / str(step) / checksums.MANIFEST)
  _damage(run / "checkpoints" / "2", "truncated params")
  with caplog.at_level(logging.WARNING, logger="training"):
    assert restore.restore(str(run)).step == 1
  assert "checkpoint 2 has no" in caplog.text and "restoring it unverified" in caplog.text
  assert "checkpoint 2 is damaged" in caplog.text  # a decode error: never a half-read result


def test_nan_weights_in_a_step_without_a_manifest_are_damage_and_restore_falls_back(base, tmp_path, caplog):
  # What no checksum can see: a pre-checksum step whose params decode, but to NaN (train.py's NaN guard
  # never saves such weights). Written with Orbax itself, so the files are well-formed.
  run = _copy_run(base, tmp_path)
  item = run / "checkpoints" / "2" / "params"
  params = ocp.StandardCheckpointer().restore(item)
  params["embed"]["embedding"] = np.full_like(np.asarray(params["embed"]["embedding"]), np.nan)
  shutil.rmtree(item)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(item, params)
  os.remove(run / "checkpoints" / "2" / checksums.MANIFEST)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=r"checkpoint 2 is damaged: .*checkpoints/2/params: parameter embed.embedding holds NaN"):
    restore.restore(str(run), 2)
  with caplog.at_level(logging.WARNING, logger="training"):
    assert restore.restore(str(run)).step == 1
  assert re.search("checkpoint 2 is damaged: .*holds NaN or inf; falling back", caplog.text)


def test_init_from_skips_a_damaged_newest_checkpoint(base, tmp_path, caplog):
  run = _copy_run(base, tmp_path)
  like = restore.restore(str(run), 1)
  like_params = nnx.to_pure_dict(nnx.state(like.model, nnx.Param))
  _damage(run / "checkpoints" / "2", "flipped params")
  with caplog.at_level(logging.WARNING, logger="training"):
    params, step = checkpoint.restore_params_from(str(run), like_params)
  assert step == 1 and re.search("checkpoint 2 is damaged: .*checksum mismatch.*; falling back", caplog.text)
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"]),
                                np.asarray(like_params["embed"]["embedding"]))


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory this process cannot write to: chmod for a normal user, a read-only bind mount for root."""
  path = tmp_path / "ro"
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o500)
    yield path
    path.chmod(0o700)
    return
  if subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode:
    pytest.skip("running as root without the right to mount: no way to make a read-only directory")
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], check=True)


def test_workdir_is_checked_before_anything_slow_and_nothing_is_left_on_a_bad_corpus(tmp_path, read_only_dir,
                                                                                     monkeypatch):
  def slow(*args, **kwargs):
    raise AssertionError("the corpus was read before the workdir was checked")

  monkeypatch.setattr(pipeline, "load_splits", slow)
  monkeypatch.setattr("data.load_splits", slow)
  with pytest.raises(ValueError, match=f"workdir='{read_only_dir}' is not writable"):
    train_and_evaluate(tiny(), str(read_only_dir))
  with pytest.raises(ValueError, match=f"workdir='{read_only_dir}/run' cannot be created: .* is not writable"):
    train_and_evaluate(tiny(), str(read_only_dir / "run"))
  monkeypatch.undo()
  with pytest.raises(ValueError, match="corpus path does not exist"):
    train_and_evaluate(tiny(**{"data.corpus": (str(tmp_path / "nope"),)}), str(tmp_path / "new_run"))
  for i in range(4):
    (tmp_path / f"e{i}.txt").write_text("")
  with pytest.raises(ValueError, match="tokens of text"):
    train_and_evaluate(tiny(**{"data.corpus": (str(tmp_path / "e*.txt"),)}), str(tmp_path / "new_run"))
  assert not (tmp_path / "new_run").exists()


def test_train_py_config_errors_are_one_line_with_exit_status_2(tmp_path):
  junk = tmp_path / "junk.jsonl.gz"
  junk.write_bytes(b"not gzip at all\n" * 8)
  cases = {("--config.optim.lr=3",): "--config.optim.lr=3: unknown config key 'optim.lr'; did you mean "
                                     "'optim.learning_rate'?",
           ("--config.num_steps=abc",): "--config.num_steps=abc: invalid literal for int()",
           ("--config=configs/decoder_tinyy.py",): "--config=configs/decoder_tinyy.py: no such file; did you mean "
                                                   "'configs/decoder_tiny.py'?",
           ("--config.data.seq_len=4096",): "config.data.seq_len=4096: exceeds model.max_len=128",
           # A tuple field is set from the command line: the error is the next one, not the window's.
           ("--config.model.window=64,0", "--config.data.seq_len=4096"): "config.data.seq_len=4096: exceeds",
           ("--config.model.window=64",): "window must be a pair of ints >= 0 (left, right), got (64,)",
           (f"--config.data.corpus={junk}",): f"corpus file {str(junk)!r} cannot be read: Not a gzipped file"}
  runs = {args: _train_py(*([] if args[0].startswith("--config=") else ["--config=configs/decoder_tiny.py:tiny"]),
                          f"--workdir={tmp_path / 'w'}", *args) for args in cases}
  for args, proc in runs.items():
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err[-3000:])
    assert cases[args] in lines[0], lines[0]
  assert not (tmp_path / "w").exists()


def test_aux_loss_is_logged_exactly_when_the_model_returns_one(base):
  assert all("aux_loss" not in m for m in read_metrics(base[1]))  # a dense model has no auxiliary loss
  cfg = from_config_dict(tiny(**{"model.attention_pattern": "GD"}))
  assert loop._setup_model(cfg, sharding.make_mesh(cfg.mesh)).has_aux  # DSA's indexer loss
