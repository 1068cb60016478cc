"""train_and_evaluate: build data, model, optimizer and mesh from a TrainConfig, then train with periodic
validation, metrics and checkpoints, resuming automatically from the newest checkpoint that restores.

Three parts: setup (validate, lock the workdir, data, model), the step loop (_StepLoop.run) and the log
record (_StepLoop.record).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

import data as data_lib
from data import pipeline
import models
from training import checkpoint, metrics as metrics_lib, optim, resume as resume_lib, sharding, step as step_lib
from training import workdir as workdir_lib
from training.config import TrainConfig, from_config_dict

_log = logging.getLogger(__name__)


class _Stop:
  """SIGTERM (preemption) sets a flag; the loop saves a checkpoint after the current step and returns."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _validate_shapes(cfg: TrainConfig, tokenizer, mesh):
  if cfg.model.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"config.model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                     f"{tokenizer.vocab_size} tokens")
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = cfg.data.batch_size // cfg.optim.grad_accum_steps
  if micro % shards or cfg.data.batch_size % jax.process_count():
    raise ValueError(f"config.data.batch_size={cfg.data.batch_size} / grad_accum_steps="
                     f"{cfg.optim.grad_accum_steps} = {micro} rows per microbatch must be a multiple of "
                     f"data x fsdp = {shards} devices (and of {jax.process_count()} hosts)")


@dataclasses.dataclass
class _Data:
  """The validated input side of a run: tokenizer, mesh, the train iterator and the validation batches."""

  tokenizer: object
  mesh: jax.sharding.Mesh
  iterator: object  # checkpointable grain iterator of {k: int32 [local_batch, T]}
  val: list  # fixed validation batches of {k: int32 [micro, T]}
  fingerprint: str  # sha256 of the packed rows: the same rows wherever the corpus lies


@dataclasses.dataclass
class _Model:
  """The model as (graphdef, params) and the sharded train state built around it."""

  graphdef: object
  abstract_params: object
  state: dict
  p_shard: object
  s_shard: dict
  tx: object
  schedule: object
  has_aux: bool  # the model returns auxiliary losses (DSA's indexer loss, MoE balance, ...)


def _fingerprint(splits) -> str:
  h = hashlib.sha256()
  for rows in (splits.train, splits.val):
    for k in ("tokens", "segment_ids"):
      h.update(np.ascontiguousarray(rows[k]).tobytes())
  return h.hexdigest()


def _setup_data(cfg: TrainConfig) -> _Data:
  tokenizer = data_lib.get_tokenizer(cfg.data.tokenizer_path or None)
  mesh = sharding.make_mesh(cfg.mesh)
  _validate_shapes(cfg, tokenizer, mesh)
  splits = data_lib.load_splits(cfg.data.corpus, tokenizer, seq_len=cfg.data.seq_len,
                                val_fraction=cfg.data.val_fraction, seed=cfg.seed,
                                max_documents=cfg.data.max_documents, text_field=cfg.data.text_field,
                                bad_files=cfg.data.bad_files)
  _log.info("corpus: %d train / %d validation documents -> %d / %d rows of %d tokens",
            splits.num_train_documents, splits.num_val_documents, len(splits.train["tokens"]),
            len(splits.val["tokens"]), cfg.data.seq_len)
  local_batch = cfg.data.batch_size // jax.process_count()
  train_ds = data_lib.train_dataset(splits.train, tokenizer, batch_size=local_batch, seed=cfg.seed,
                                    passkey_rate=cfg.data.passkey_rate, passkey_prompt=cfg.data.passkey_prompt,
                                    mqar_rate=cfg.data.mqar_rate, episode_min_len=cfg.data.episode_min_len,
                                    mqar_loss=cfg.data.mqar_loss, position_stride=cfg.data.position_stride,
                                    passkey_depth=cfg.data.passkey_depth,
                                    passkey_whole_rate=cfg.data.passkey_whole_rate,
                                    shard_index=jax.process_index(), shard_count=jax.process_count())
  micro = cfg.data.batch_size // cfg.optim.grad_accum_steps
  return _Data(tokenizer, mesh, data_lib.train_iterator(train_ds, num_threads=cfg.data.loader_threads),
               data_lib.val_batches(splits.val, batch_size=micro, num_batches=cfg.data.num_val_batches),
               _fingerprint(splits))


def _setup_model(cfg: TrainConfig, mesh) -> _Model:
  # The model as (graphdef, params): params are a pure dict of arrays, laid out by their logical axes.
  build = lambda: models.build_model(cfg.model, rngs=nnx.Rngs(cfg.seed))
  graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError("the trainer handles models whose only state is nnx.Param; this model also has "
                              f"{list(nnx.to_flat_state(rest))[:3]}")
  p_shard = sharding.param_shardings(abstract_params, mesh)
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build(), nnx.Param)), out_shardings=p_shard)()
  tx, schedule = optim.optimizer(cfg), optim.schedule(cfg)
  rep = sharding.replicated(mesh)
  o_shard = sharding.optimizer_shardings(jax.eval_shape(tx.init, params), p_shard, mesh)
  s_shard = {"params": p_shard, "opt_state": o_shard, "step": rep, "rng": rep, "skipped_steps": rep,
             "consecutive_skips": rep}
  state = jax.jit(functools.partial(step_lib.init_state, tx=tx, seed=cfg.seed), out_shardings=s_shard)(params)
  # Whether the model returns auxiliary losses: traced once, abstractly, under the mesh (ring attention).
  rows = jax.ShapeDtypeStruct((mesh.shape["data"] * mesh.shape["fsdp"], cfg.data.seq_len), np.int32)
  with jax.set_mesh(mesh):
    *_, aux = jax.eval_shape(step_lib.make_apply(graphdef, abstract_params), nnx.to_pure_dict(abstract_params),
                            {k: rows for k in pipeline.ROW_KEYS})
  return _Model(graphdef, abstract_params, state, p_shard, s_shard, tx, schedule, bool(aux))


def train_and_evaluate(config: ml_collections.ConfigDict | TrainConfig, workdir: str) -> dict:
  """Train (or resume) the run in `workdir`; returns {"step", "val_loss", "checkpoint", "stopped_early"}.

  Fails before anything slow on a bad config, an unwritable workdir or a workdir another live run holds,
  and creates nothing on disk before the corpus has been read and checked.
  """
  cfg = config if isinstance(config, TrainConfig) else from_config_dict(config)
  workdir_lib.check_writable(workdir)
  lock = workdir_lib.WorkdirLock(workdir)
  primary = jax.process_index() == 0
  try:
    if primary and os.path.isdir(workdir):
      lock.acquire()  # a second run refuses here, at once
    data = _setup_data(cfg)
    os.makedirs(workdir, exist_ok=True)
    if primary and not lock.held:
      lock.acquire()
    return _train(cfg, workdir, data, _setup_model(cfg, data.mesh))
  finally:
    lock.release()


def _train(cfg: TrainConfig, workdir: str, data: _Data, model: _Model) -> dict:
  """Resume if a checkpoint restores, compile, run the step loop, and save on the way out."""
  state = model.state
  mngr = checkpoint.manager(workdir, cfg)
  writer = None
  try:
    resumed, changes = resume_lib.resume(cfg, workdir, mngr, state, data.fingerprint)
    start = resumed.step if resumed else 0
    if resumed:
      state = resumed.state
      data.iterator.set_state(resumed.data_state)
      _log.info("resumed from %s at step %d", mngr.directory, start)
    elif cfg.init_from:
      loaded, from_step = checkpoint.restore_params_from(cfg.init_from, state["params"])
      state = dict(state, params=loaded)
      _log.info("initialised params from %s (step %d)", cfg.init_from, from_step)
    writer = metrics_lib.MetricsWriter(workdir, resume_step=start, total_steps=cfg.num_steps)
    if changes:
      writer.note(start, {"config_changes": {k: list(v) for k, v in changes.items()}})
    loop = _StepLoop(cfg, workdir, data, model, mngr, writer)
    step, state, val_loss, stopped = loop.run(state, start)
    if val_loss is None:
      val_loss = loop.validate(state["params"])
  finally:
    mngr.wait_until_finished()
    mngr.close()
    if writer is not None:
      writer.close()
  path = os.path.join(str(mngr.directory), str(step))
  return {"step": step, "val_loss": val_loss, "checkpoint": path, "stopped_early": stopped}


class _StepLoop:
  """The compiled train / eval steps and the loop that runs them, validates, logs and saves."""

  def __init__(self, cfg: TrainConfig, workdir: str, data: _Data, model: _Model, mngr, writer):
    self.cfg, self.workdir, self.data, self.model, self.mngr, self.writer = cfg, workdir, data, model, mngr, writer
    mesh = data.mesh
    objective = step_lib.make_objective(cfg, step_lib.make_apply(model.graphdef, model.abstract_params),
                                        data.tokenizer)
    rep = sharding.replicated(mesh)
    self.batch_shard = sharding.batch_sharding(mesh, ndim=3, leading=1)
    self.train_step = jax.jit(step_lib.make_train_step(cfg, objective, model.tx, model.schedule),
                              donate_argnums=0, in_shardings=(model.s_shard, self.batch_shard),
                              out_shardings=(model.s_shard, rep))
    self.eval_step = jax.jit(step_lib.make_eval_step(objective, cfg.seed),
                             in_shardings=(model.p_shard, sharding.batch_sharding(mesh)), out_shardings=rep)
    self.flops_per_step = metrics_lib.train_flops_per_token(cfg) * cfg.data.batch_size * cfg.data.seq_len
    self.peak = metrics_lib.peak_tflops(cfg)

  def next_batch(self):
    accum, local_batch = self.cfg.optim.grad_accum_steps, self.cfg.data.batch_size // jax.process_count()
    b = next(self.data.iterator)  # {k: [local_batch, T]}
    b = {k: v.reshape(accum, local_batch // accum, -1) for k, v in b.items()}
    return sharding.global_batch(b, self.batch_shard)

  def validate(self, params) -> float:
    ce, count = 0.0, 0.0
    for b in self.data.val:
      with jax.set_mesh(self.data.mesh):
        c, n = self.eval_step(params, sharding.global_batch(b, sharding.batch_sharding(self.data.mesh)))
      ce, count = ce + float(c), count + float(n)
    return ce / max(count, 1.0)

  def record(self, m: dict, state: dict, window: list[float], val_loss) -> dict:
    """The metrics.jsonl record of a logged step: losses, throughput, MFU, skips, aux and val losses."""
    cfg = self.cfg
    m = jax.device_get(m)
    dt = float(np.mean(window))
    tflops = self.flops_per_step / dt / self.data.mesh.devices.size / 1e12
    record = {"loss": m["loss"], "grad_norm": m["grad_norm"], "learning_rate": m["learning_rate"],
              "tokens_per_sec": cfg.data.batch_size * cfg.data.seq_len / dt, "step_time_s": dt,
              "tflops_per_device": tflops, "mfu": tflops / self.peak if self.peak else None,
              "skipped_steps": int(jax.device_get(state["skipped_steps"]))}
    if self.model.has_aux:
      record["aux_loss"] = m["aux_loss"]
    if val_loss is not None:
      record["val_loss"] = val_loss
    return record

  def run(self, state: dict, start: int) -> tuple[int, dict, float | None, bool]:
    """Steps from `start` to the run's last step, or until SIGTERM: (step, state, val_loss, stopped)."""
    cfg = self.cfg
    last = min(cfg.num_steps, start + cfg.max_steps_per_run) if cfg.max_steps_per_run else cfg.num_steps
    val_loss, stopped, window, step, profiling = None, False, [], start, False
    train_step = self.train_step
    try:
      with _Stop() as stop:
        batch = self.next_batch() if start < last else None
        if batch is not None:
          t = time.perf_counter()
          with jax.set_mesh(self.data.mesh):  # traced under the mesh: attention is a ring when context > 1
            train_step = train_step.lower(state, batch).compile()
          _log.info("compiled the train step in %.1fs", time.perf_counter() - t)
        while step < last:
          batch = self.next_batch() if batch is None else batch
          if step == cfg.profile_start_step:
            jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
            profiling = True
          t = time.perf_counter()
          state, m = train_step(state, batch)
          batch = None  # consumed: the iterator state now matches `state` (saved together below)
          consecutive = int(jax.device_get(state["consecutive_skips"]))  # also waits for the step
          window.append(time.perf_counter() - t)
          step += 1
          if profiling and step >= cfg.profile_start_step + cfg.profile_num_steps:
            jax.profiler.stop_trace()
            profiling = False
          if consecutive >= cfg.max_consecutive_skips:
            raise FloatingPointError(
                f"step {step}: {consecutive} consecutive steps had a NaN/Inf loss or gradient and were "
                f"skipped (max_consecutive_skips={cfg.max_consecutive_skips}); lower optim.learning_rate or "
                "check the data")
          evaluated = step % cfg.eval_every == 0 or step == last
          if evaluated:
            val_loss = self.validate(state["params"])
          if step % cfg.log_every == 0 or step == last:
            self.writer.write(step, self.record(m, state, window, val_loss if evaluated else None))
            window = []
          if step % cfg.checkpoint.every == 0 or step == last or stop.requested:
            checkpoint.save(self.mngr, state, self.data.iterator.get_state(), cfg, self.data.fingerprint)
          if stop.requested:
            _log.info("SIGTERM: saved step %d, exiting", step)
            stopped = True
            break
    finally:
      if profiling:
        jax.profiler.stop_trace()
    return step, state, val_loss, stopped
