"""Compiled memory of one whole training step (forward, backward, optimizer update; batch 1) of a preset.

Nothing runs: the train step of training/ (the trainer's own objective, optimizer and shardings) is
lowered with abstract arguments and compiled by the CPU compiler, and memory_analysis() gives its
argument, output and temporary bytes (per device under a mesh: with --context=C the sequence is split
over C fake CPU devices and attention is a ring). Those are deterministic functions of the program, so a
1B-parameter step at 128K tokens is measured on a laptop. Memory of the CPU's buffer assignment, which
follows XLA's GPU/TPU one closely but not exactly (e.g. the CPU has no bf16 dots and converts them).

  python -m benchmarks.train_memory --preset=decoder_125m --seq_len=131072 --remat=full \
      --loss_chunk_tokens=8192 [--attention_pattern=LG] [--context=8] --json=PATH
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import data as data_lib  # noqa: E402
import models  # noqa: E402
from training import optim, sharding, step as step_lib  # noqa: E402
from training.config import default_config, from_config_dict  # noqa: E402


def train_config(preset: str, seq_len: int, *, remat: str, loss_chunk_tokens: int, attention_pattern: str = "",
                 context: int = 1, dtype: str = "bfloat16"):
  """The TrainConfig of a batch-1 step of `preset` at seq_len tokens (max_len raised to seq_len)."""
  c = default_config(preset)
  c.model.update(max_len=max(seq_len, c.model.max_len), remat=remat, dtype=dtype)
  if attention_pattern:
    c.model.attention_pattern = attention_pattern
  c.data.update(seq_len=seq_len, batch_size=1)
  c.mesh.update(data=1, fsdp=1, tensor=1, context=context)
  c.loss_chunk_tokens = loss_chunk_tokens
  return from_config_dict(c)


def compile_step(cfg):
  """(the compiled train step of cfg for abstract inputs, compile seconds)."""
  mesh = sharding.make_mesh(cfg.mesh)
  build = lambda: models.build_model(cfg.model, rngs=nnx.Rngs(0))
  graphdef, abstract_params = nnx.split(nnx.eval_shape(build), nnx.Param)
  p_shard = sharding.param_shardings(abstract_params, mesh)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_params), p_shard)
  tx, schedule = optim.optimizer(cfg), optim.schedule(cfg)
  rep = sharding.replicated(mesh)
  state = jax.eval_shape(functools.partial(step_lib.init_state, tx=tx, seed=0), params)
  o_shard = sharding.optimizer_shardings(state["opt_state"], p_shard, mesh)
  s_shard = {"params": p_shard, "opt_state": o_shard, "step": rep, "rng": rep, "skipped_steps": rep,
             "consecutive_skips": rep}
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, s_shard)
  batch_shard = sharding.batch_sharding(mesh, ndim=3, leading=1)
  row = jax.ShapeDtypeStruct((1, 1, cfg.data.seq_len), jnp.int32, sharding=batch_shard)  # [A, B, T]
  batch = {"tokens": row, "segment_ids": row, "positions": row}
  objective = step_lib.make_objective(cfg, step_lib.make_apply(graphdef, abstract_params),
                                      data_lib.get_tokenizer(None))
  train_step = jax.jit(step_lib.make_train_step(cfg, objective, tx, schedule), donate_argnums=0,
                       in_shardings=(s_shard, batch_shard), out_shardings=(s_shard, rep))
  t = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = train_step.lower(state, batch).compile()
  return compiled, time.perf_counter() - t


def measure(cfg) -> dict:
  """{"temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "total_bytes", "compile_s", ...}."""
  compiled, compile_s = compile_step(cfg)
  m = compiled.memory_analysis()
  out = {"temp_bytes": int(m.temp_size_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
         "output_bytes": int(m.output_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes)}
  # Donated state: outputs alias the arguments, so the step's peak is arguments + outputs + temps - aliased.
  out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
  out["param_count"] = models.param_count(cfg.model)
  out["compile_s"] = compile_s
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", required=True, help=f"one of {models.presets.NAMES}")
  parser.add_argument("--seq_len", type=int, required=True)
  parser.add_argument("--remat", default="none", help="model.remat policy")
  parser.add_argument("--loss_chunk_tokens", type=int, default=0)
  parser.add_argument("--attention_pattern", default="", help="e.g. G, LG, D (default: the preset's)")
  parser.add_argument("--context", type=int, default=1, help="context-parallel devices (fake CPU devices)")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
  parser.add_argument("--json", required=True, help="output path")
  args = parser.parse_args(argv)
  try:
    cfg = train_config(args.preset, args.seq_len, remat=args.remat, loss_chunk_tokens=args.loss_chunk_tokens,
                       attention_pattern=args.attention_pattern, context=args.context, dtype=args.dtype)
  except ValueError as e:
    sys.exit(f"error: {e}")
  result = {"preset": args.preset, "seq_len": args.seq_len, "remat": args.remat,
            "loss_chunk_tokens": args.loss_chunk_tokens, "attention_pattern": cfg.model.pattern_string(),
            "context": args.context, "dtype": args.dtype, "batch_size": 1,
            "attention_impl": cfg.model.attention_impl, "machine": f"{platform.machine()} CPU compiler, "
            f"jax {jax.__version__}"}
  result.update(measure(cfg))
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)
  gib = result["total_bytes"] / 2**30
  print(f"{args.preset} L={args.seq_len} remat={args.remat} chunk={args.loss_chunk_tokens} "
        f"pattern={result['attention_pattern']} context={args.context}: {gib:.2f} GiB per device "
        f"(temp {result['temp_bytes'] / 2**30:.2f}), compiled in {result['compile_s']:.0f}s")


if __name__ == "__main__":
  main()
