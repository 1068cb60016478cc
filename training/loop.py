"""train_and_evaluate: build data, model, optimizer and mesh from a TrainConfig, then train with periodic
validation, metrics and checkpoints, resuming automatically from the latest complete checkpoint.
"""

from __future__ import annotations

import functools
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
import models
from training import checkpoint, metrics as metrics_lib, optim, sharding, step as step_lib
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


def train_and_evaluate(config: ml_collections.ConfigDict | TrainConfig, workdir: str) -> dict:
  """Train (or resume) the run in `workdir`; returns {"step", "val_loss", "checkpoint", "stopped_early"}."""
  cfg = config if isinstance(config, TrainConfig) else from_config_dict(config)
  tokenizer = data_lib.get_tokenizer(cfg.data.tokenizer_path or None)
  mesh = sharding.make_mesh(cfg.mesh)
  _validate_shapes(cfg, tokenizer, mesh)
  os.makedirs(workdir, exist_ok=True)

  splits = data_lib.load_splits(cfg.data.corpus, tokenizer, seq_len=cfg.data.seq_len,
                                val_fraction=cfg.data.val_fraction, seed=cfg.seed,
                                max_documents=cfg.data.max_documents, text_field=cfg.data.text_field)
  _log.info("corpus: %d train / %d validation documents -> %d / %d rows of %d tokens",
            splits.num_train_documents, splits.num_val_documents, len(splits.train["tokens"]),
            len(splits.val["tokens"]), cfg.data.seq_len)
  accum = cfg.optim.grad_accum_steps
  local_batch = cfg.data.batch_size // jax.process_count()
  train_ds = data_lib.train_dataset(splits.train, tokenizer, batch_size=local_batch, seed=cfg.seed,
                                    passkey_rate=cfg.data.passkey_rate, passkey_prompt=cfg.data.passkey_prompt,
                                    mqar_rate=cfg.data.mqar_rate, shard_index=jax.process_index(),
                                    shard_count=jax.process_count())
  data_iter = data_lib.train_iterator(train_ds, num_threads=cfg.data.loader_threads)
  micro = cfg.data.batch_size // accum
  val = data_lib.val_batches(splits.val, batch_size=micro, num_batches=cfg.data.num_val_batches)

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

  mngr = checkpoint.manager(workdir, cfg)
  start = mngr.latest_step() or 0
  if start:
    state, data_state = checkpoint.restore(mngr, start, state)
    data_iter.set_state(data_state)
    _log.info("resumed from %s at step %d", mngr.directory, start)
  elif cfg.init_from:
    loaded, from_step = checkpoint.restore_params_from(cfg.init_from, state["params"])
    state = dict(state, params=loaded)
    _log.info("initialised params from %s (step %d)", cfg.init_from, from_step)

  objective = step_lib.make_objective(cfg, step_lib.make_apply(graphdef, abstract_params), tokenizer)
  batch_shard = sharding.batch_sharding(mesh, ndim=3, leading=1)
  train_step = jax.jit(step_lib.make_train_step(cfg, objective, tx, schedule), donate_argnums=0,
                       in_shardings=(s_shard, batch_shard), out_shardings=(s_shard, rep))
  eval_step = jax.jit(step_lib.make_eval_step(objective, cfg.seed),
                      in_shardings=(p_shard, sharding.batch_sharding(mesh)), out_shardings=rep)

  def next_batch():
    b = next(data_iter)  # {k: [local_batch, T]}
    b = {k: v.reshape(accum, local_batch // accum, -1) for k, v in b.items()}
    return sharding.global_batch(b, batch_shard)

  def validate(params):
    ce, count = 0.0, 0.0
    for b in val:
      with jax.set_mesh(mesh):
        c, n = eval_step(params, sharding.global_batch(b, sharding.batch_sharding(mesh)))
      ce, count = ce + float(c), count + float(n)
    return ce / max(count, 1.0)

  flops_per_step = metrics_lib.train_flops_per_token(cfg) * cfg.data.batch_size * cfg.data.seq_len
  peak = metrics_lib.peak_tflops(cfg)
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start, total_steps=cfg.num_steps)
  last = min(cfg.num_steps, start + cfg.max_steps_per_run) if cfg.max_steps_per_run else cfg.num_steps
  val_loss, stopped, window = None, False, []
  step = start
  profiling = False
  try:
    with _Stop() as stop:
      batch = next_batch() if start < last else None
      if batch is not None:
        t = time.perf_counter()
        with jax.set_mesh(mesh):  # traced under the mesh: attention is a ring when its context axis is > 1
          train_step = train_step.lower(state, batch).compile()
        _log.info("compiled the train step in %.1fs", time.perf_counter() - t)
      while step < last:
        batch = next_batch() if batch is None else batch
        if step == cfg.profile_start_step:
          jax.profiler.start_trace(os.path.join(workdir, "profile"))
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
              f"step {step}: {consecutive} consecutive steps had a NaN/Inf loss or gradient and were skipped "
              f"(max_consecutive_skips={cfg.max_consecutive_skips}); lower optim.learning_rate or check the data")
        if step % cfg.eval_every == 0 or step == last:
          val_loss = validate(state["params"])
        if step % cfg.log_every == 0 or step == last:
          m = jax.device_get(m)
          dt = float(np.mean(window))
          tps = cfg.data.batch_size * cfg.data.seq_len / dt
          tflops = flops_per_step / dt / mesh.devices.size / 1e12
          record = {"loss": m["loss"], "grad_norm": m["grad_norm"], "learning_rate": m["learning_rate"],
                    "tokens_per_sec": tps, "step_time_s": dt, "tflops_per_device": tflops,
                    "mfu": tflops / peak if peak else None,
                    "skipped_steps": int(jax.device_get(state["skipped_steps"]))}
          if models.AttentionType.DSA in cfg.model.attention_pattern:
            record["aux_loss"] = m["aux_loss"]
          if step % cfg.eval_every == 0 or step == last:
            record["val_loss"] = val_loss
          writer.write(step, record)
          window = []
        if step % cfg.checkpoint.every == 0 or step == last or stop.requested:
          checkpoint.save(mngr, state, data_iter.get_state(), cfg)
        if stop.requested:
          _log.info("SIGTERM: saved step %d, exiting", step)
          stopped = True
          break
  finally:
    if profiling:
      jax.profiler.stop_trace()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  if val_loss is None:
    val_loss = validate(state["params"])
  path = os.path.join(str(mngr.directory), str(step))
  return {"step": step, "val_loss": val_loss, "checkpoint": path, "stopped_early": stopped}
