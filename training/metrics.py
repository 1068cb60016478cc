"""Metrics: DIR/metrics.jsonl, TensorBoard events, a console line with ETA, and FLOPs / MFU accounting.

Model FLOPs per token follow Kaplan et al. (2020) and the PaLM appendix (Chowdhery et al., 2022): 6 x the
parameters that multiply activations (every weight except the embedding lookup; a tied embedding still
counts once as the output projection) plus 3 x the forward attention FLOPs, which models/ counts per layer
type (causal halved, local w x L, DSA k x L plus the indexer). MFU divides achieved model FLOPs by the
device's peak dense bf16 FLOP rate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax

import models
from training.config import TrainConfig

_log = logging.getLogger(__name__)

# Peak dense bf16 TFLOP/s per device, by jax device_kind prefix.
PEAK_TFLOPS = {
    "NVIDIA H200": 989.0, "NVIDIA H100": 989.0, "NVIDIA A100": 312.0, "NVIDIA L4": 121.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}


def train_flops_per_token(config: TrainConfig) -> float:
  """Forward + backward model FLOPs per token at the training sequence length."""
  cfg = config.model
  matmul_params = models.param_count(cfg)
  if not cfg.tie_embeddings:
    matmul_params -= cfg.vocab_size * cfg.d_model  # the input embedding is a lookup, not a matmul
  return 6.0 * matmul_params + 3.0 * models.attention_flops_per_token(cfg, config.data.seq_len)


def peak_tflops(config: TrainConfig) -> float | None:
  """The configured peak, else the table's entry for this device kind, else None (MFU is then null)."""
  if config.peak_tflops_per_device > 0:
    return config.peak_tflops_per_device
  kind = jax.devices()[0].device_kind
  for prefix, peak in PEAK_TFLOPS.items():
    if kind.startswith(prefix):
      return peak
  _log.info("no peak FLOP rate known for device kind %r: mfu is null (set config.peak_tflops_per_device)", kind)
  return None


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, *, resume_step: int, total_steps: int):
    self.primary = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.total_steps = total_steps
    self._t0, self._s0 = time.time(), resume_step
    self._tb = None
    if self.primary:
      os.makedirs(workdir, exist_ok=True)
      self._truncate_after(resume_step)
      from tensorboardX import SummaryWriter  # imported here: only the writing process needs it
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate_after(self, step: int):
    """Drop lines past the restored step: a resumed run logs those steps again (identically)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(keep)

  def write(self, step: int, metrics: dict):
    if not self.primary:
      return
    record = {"step": step, **{k: _json_number(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in record.items():
      if k != "step" and v is not None:
        self._tb.add_scalar(k, v, step)
    done = step - self._s0
    eta = (time.time() - self._t0) / max(done, 1) * (self.total_steps - step)
    parts = [f"step {step}/{self.total_steps}"] + [
        f"{k} {record[k]:.4g}" for k in ("loss", "val_loss", "grad_norm", "learning_rate", "tokens_per_sec")
        if record.get(k) is not None]
    if record.get("skipped_steps"):
      parts.append(f"skipped {record['skipped_steps']}")
    _log.info("%s | ETA %s", " | ".join(parts), _hms(eta))

  def note(self, step: int, event: dict):
    """Append a non-metric record (e.g. the config changes of a resume) to metrics.jsonl only."""
    if self.primary:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **event}) + "\n")

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _json_number(v):
  """Python int/float for JSON; NaN and Inf (a skipped step's loss) become null, as JSON has no NaN."""
  if v is None or isinstance(v, int):
    return v
  v = float(v)
  return v if math.isfinite(v) else None


def _hms(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
