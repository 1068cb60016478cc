"""The training configuration: the ConfigDict skeleton every config file fills, and its frozen form.

As in the Flax examples, an experiment is a Python file whose get_config(arg) returns an
ml_collections.ConfigDict; train_and_evaluate turns it once into a frozen, validated TrainConfig, so a bad
value fails before any compilation with a message naming the key, and nothing downstream reads the
ConfigDict again.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections

from data.corpus import BAD_FILES, BUILTIN
from models import ModelConfig, presets


@dataclasses.dataclass(frozen=True)
class DataConfig:
  corpus: tuple[str, ...] = (BUILTIN,)  # files, directories, globs or "builtin:stdlib"
  text_field: str = "text"  # the document's field / column in .jsonl(.gz) and .parquet corpus files
  bad_files: str = "error"  # a corpus file that cannot be read as text: "error" | "skip" (left out, counted)
  tokenizer_path: str = ""  # "" = bytes; a tokenizer.json or a model folder holding one; else a JSON vocabulary
  seq_len: int = 256
  batch_size: int = 8  # global batch (rows per optimizer step, summed over accumulation and devices)
  val_fraction: float = 0.02
  max_documents: int = 0  # 0 = all
  passkey_rate: float = 0.0  # fraction of training rows replaced by passkey examples
  passkey_prompt: str = "landmark"  # data.passkey.PROMPTS: "landmark" (>= 254 tokens) | "compact"
  mqar_rate: float = 0.0  # fraction of training rows replaced by MQAR rows (data/mqar.py)
  episode_min_len: int = 0  # > 0: passkey/MQAR rows are packs of episodes this long and up (data/retrieval.py)
  mqar_loss: str = "all"  # "answers": retrieval answers weighted up, MQAR rows score only theirs (data.train_dataset)
  position_stride: int = 1  # > 1: training positions advance by a random 1..N per token (data.jitter_positions)
  passkey_depth: str = "uniform"  # "log_distance": half the needles at a log-uniform distance (data.draw_depth)
  passkey_whole_rate: float = 0.0  # with episode_min_len: the fraction of passkey rows that are one whole-row prompt
  num_val_batches: int = 4
  mlm_rate: float = 0.3  # encoder only: ModernBERT masks 30% (80% MASK / 10% random / 10% kept)
  loader_threads: int = 2


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-3
  schedule: str = "cosine"  # "cosine" (warmup + cosine) | "wsd" (warmup-stable-decay) | "constant"
  warmup_steps: int = 100
  decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to min_lr_ratio
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0  # global-norm clipping; 0 = off
  grad_accum_steps: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 500
  max_to_keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # -1 = all devices left over
  fsdp: int = 1
  tensor: int = 1
  context: int = 1  # sequence (ring attention) parallelism; tokens are split over it


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  model: ModelConfig
  data: DataConfig
  optim: OptimConfig
  checkpoint: CheckpointConfig
  mesh: MeshConfig
  seed: int = 0
  num_steps: int = 1000  # the schedule's length
  max_steps_per_run: int = 0  # stop this invocation after so many steps (0 = run to num_steps)
  log_every: int = 10
  eval_every: int = 200
  init_from: str = ""  # another workdir: start from its latest params (fine-tuning, context extension)
  max_consecutive_skips: int = 10  # NaN/Inf guard: stop after this many skipped updates in a row
  inject_nan_steps: tuple[int, ...] = ()  # test hook: make the loss NaN at these steps
  profile_start_step: int = -1  # jax.profiler trace of profile_num_steps steps from here; -1 = off
  profile_num_steps: int = 5
  peak_tflops_per_device: float = 0.0  # 0 = look up the device kind (MFU is null where unknown)
  resume_step: int = 0  # resume from this checkpoint step (0 = the newest one that restores completely)
  allow_config_change: bool = False  # resume even if the config changes the data order or the model
  loss_chunk_tokens: int = 0  # output projection + cross-entropy this many tokens at a time; 0 = one chunk

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["model"] = self.model.to_dict()
    return json.loads(json.dumps(d))


def default_config(model_preset: str) -> ml_collections.ConfigDict:
  """The full ConfigDict with every key and its default; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(_tuples(presets.get(model_preset).to_dict()))
  for name, cls in (("data", DataConfig), ("optim", OptimConfig), ("checkpoint", CheckpointConfig),
                    ("mesh", MeshConfig)):
    c[name] = ml_collections.ConfigDict(dataclasses.asdict(cls()))
  for f in dataclasses.fields(TrainConfig):
    if f.name not in c:
      c[f.name] = f.default
  return c


def sized(c: ml_collections.ConfigDict, arg: str, path: str) -> ml_collections.ConfigDict:
  """A config file's `c` for its argument: "" as written, "tiny" shrunk for a CPU smoke run; any other
  argument raises ValueError naming the file (`path`, e.g. "configs/demo.py")."""
  if arg == "tiny":
    return shrink_for_cpu(c)
  if arg:
    raise ValueError(f"{path}: unknown argument {arg!r} (use '' or 'tiny')")
  return c


def _tuples(d: dict) -> dict:
  """`d` with every list made a tuple: ml_collections overrides tuple fields from the command line
  (`--config.model.window=64,0`) but refuses list-typed ones, and a list assigned later to a tuple field
  becomes a tuple."""
  return {k: _tuples(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def shrink_for_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `tiny` argument of every config: the same architecture (pattern, norms, MLP kind, GQA ratio)
  at toy size, on the built-in corpus, for a CPU smoke run of a couple of steps."""
  m = c.model
  ratio = max(1, m.num_heads // m.num_kv_heads)
  m.update(d_model=64, num_heads=4, num_kv_heads=max(1, 4 // ratio), head_dim=16, mlp_dim=128,
           num_layers=min(m.num_layers, 3), vocab_size=272, max_len=128, dsa_index_heads=2, dsa_index_dim=16,
           dsa_rope_dim=8, dsa_top_k=16, window=tuple(min(w, 16) for w in m.window))
  c.data.update(corpus=(BUILTIN,), tokenizer_path="", seq_len=32, batch_size=8, max_documents=40,
                num_val_batches=1, passkey_rate=0.0, mqar_rate=0.0)
  c.optim.update(warmup_steps=1, grad_accum_steps=1)
  c.mesh.update(data=-1, fsdp=1, tensor=1, context=1)
  c.update(num_steps=2, log_every=1, eval_every=2)
  c.checkpoint.every = 2
  return c


def _convert(cls, d: dict, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """Check `d`'s keys against `cls`'s fields (minus `skip`) and its values against the defaults' types."""
  fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
  prefix = f"{where}." if where else ""
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(f"unknown config keys {[prefix + k for k in unknown]}; known: {sorted(fields)}")
  out = {}
  for k, v in d.items():
    default, key = fields[k].default, f"config.{prefix}{k}"
    if isinstance(default, tuple):
      v = (v,) if isinstance(v, str) else tuple(v)
    elif isinstance(default, bool):
      if not isinstance(v, bool):
        raise ValueError(f"{key} must be a bool, got {v!r}")
    elif isinstance(default, int):
      if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key} must be an int, got {v!r}")
    elif isinstance(default, float):
      if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} must be a number, got {v!r}")
      v = float(v)
    elif isinstance(default, str) and not isinstance(v, str):
      raise ValueError(f"{key} must be a string, got {v!r}")
    out[k] = v
  return out


def _check(cond: bool, key: str, value, rule: str):
  if not cond:
    raise ValueError(f"config.{key}={value!r}: {rule}")


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "checkpoint": CheckpointConfig, "mesh": MeshConfig}


def from_config_dict(config: ml_collections.ConfigDict | dict) -> TrainConfig:
  """Validate `config` and freeze it; unknown keys and bad values raise ValueError naming the key."""
  d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  if "model" not in d:
    raise ValueError("config.model is missing (start from training.config.default_config(preset))")
  try:
    model = ModelConfig.from_dict(dict(d.pop("model")))
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.model: {e}") from e
  parts = {name: cls(**_convert(cls, dict(d.pop(name, {})), name)) for name, cls in _SECTIONS.items()}
  top = _convert(TrainConfig, d, "", skip=("model", *_SECTIONS))
  cfg = TrainConfig(model=model, **parts, **top)
  _validate(cfg)
  return cfg


def _validate(c: TrainConfig):
  d, o = c.data, c.optim
  _check(c.num_steps >= 1, "num_steps", c.num_steps, "must be >= 1")
  for k in ("log_every", "eval_every"):
    _check(getattr(c, k) >= 1, k, getattr(c, k), "must be >= 1")
  _check(c.loss_chunk_tokens >= 0, "loss_chunk_tokens", c.loss_chunk_tokens, "must be >= 0 (0 = one chunk)")
  _check(c.max_steps_per_run >= 0, "max_steps_per_run", c.max_steps_per_run, "must be >= 0")
  _check(c.resume_step >= 0, "resume_step", c.resume_step, "must be >= 0 (0 = the newest checkpoint)")
  _check(c.max_consecutive_skips >= 1, "max_consecutive_skips", c.max_consecutive_skips, "must be >= 1")
  _check(all(isinstance(s, int) for s in c.inject_nan_steps), "inject_nan_steps", c.inject_nan_steps,
         "must be a tuple of ints")
  _check(len(d.corpus) >= 1, "data.corpus", d.corpus, "must name at least one source")
  _check(all(isinstance(x, str) for x in d.corpus), "data.corpus", d.corpus,
         "must be paths, directories, globs or 'builtin:stdlib' (strings)")
  _check(d.bad_files in BAD_FILES, "data.bad_files", d.bad_files, f"must be one of {BAD_FILES}")
  _check(d.seq_len >= 2, "data.seq_len", d.seq_len, "must be >= 2")
  _check(d.seq_len <= c.model.max_len, "data.seq_len", d.seq_len, f"exceeds model.max_len={c.model.max_len}")
  _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
  _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
  _check(0 <= d.passkey_rate <= 1, "data.passkey_rate", d.passkey_rate, "must be in [0, 1]")
  _check(d.passkey_prompt in ("landmark", "compact"), "data.passkey_prompt", d.passkey_prompt,
         "must be 'landmark' or 'compact'")
  _check(d.episode_min_len == 0 or 2 <= d.episode_min_len <= d.seq_len, "data.episode_min_len",
         d.episode_min_len, f"must be 0 or in [2, data.seq_len={d.seq_len}]")
  _check(0 <= d.mqar_rate <= 1 - d.passkey_rate, "data.mqar_rate", d.mqar_rate,
         f"must be in [0, 1 - data.passkey_rate={d.passkey_rate}]")
  _check(0 <= d.passkey_whole_rate <= 1, "data.passkey_whole_rate", d.passkey_whole_rate, "must be in [0, 1]")
  _check(d.position_stride >= 1, "data.position_stride", d.position_stride, "must be >= 1")
  _check(d.passkey_depth in ("uniform", "log_distance"), "data.passkey_depth", d.passkey_depth,
         "must be 'uniform' or 'log_distance'")
  _check(d.mqar_loss in ("all", "answers"), "data.mqar_loss", d.mqar_loss,
         "must be 'all' or 'answers'")
  _check(0 < d.mlm_rate < 1, "data.mlm_rate", d.mlm_rate, "must be in (0, 1)")
  _check(d.max_documents >= 0, "data.max_documents", d.max_documents, "must be >= 0")
  _check(d.num_val_batches >= 1, "data.num_val_batches", d.num_val_batches, "must be >= 1")
  _check(o.schedule in ("cosine", "wsd", "constant"), "optim.schedule", o.schedule,
         "must be 'cosine', 'wsd' or 'constant'")
  _check(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "must be > 0")
  _check(0 <= o.warmup_steps < c.num_steps, "optim.warmup_steps", o.warmup_steps,
         f"must be in [0, num_steps={c.num_steps})")
  _check(0 < o.decay_fraction <= 1, "optim.decay_fraction", o.decay_fraction, "must be in (0, 1]")
  _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
  _check(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0")
  _check(o.grad_accum_steps >= 1 and d.batch_size % o.grad_accum_steps == 0, "optim.grad_accum_steps",
         o.grad_accum_steps, f"must be >= 1 and divide data.batch_size={d.batch_size}")
  _check(c.checkpoint.every >= 1, "checkpoint.every", c.checkpoint.every, "must be >= 1")
  _check(c.checkpoint.max_to_keep >= 1, "checkpoint.max_to_keep", c.checkpoint.max_to_keep, "must be >= 1")
  m = c.mesh
  for k in ("data", "fsdp", "tensor", "context"):
    v = getattr(m, k)
    _check(v == -1 or v >= 1, f"mesh.{k}", v, "must be -1 (fill) or >= 1")
  _check(sum(getattr(m, k) == -1 for k in ("data", "fsdp", "tensor", "context")) <= 1, "mesh", m,
         "at most one axis may be -1")
