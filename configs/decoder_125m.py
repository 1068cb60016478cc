"""A GPT-2-small-sized (125M) Llama-style decoder at 2K context, bf16 compute. For one accelerator or a
small slice; `tiny` runs the same architecture at toy size on the CPU.

python train.py --config=configs/decoder_125m.py --workdir=/tmp/decoder_125m
"""

from training.config import default_config, shrink_for_cpu


def get_config(arg: str = ""):
  c = default_config("decoder_125m")
  c.model.dtype = "bfloat16"
  c.data.seq_len = 2048
  c.data.batch_size = 64
  c.data.val_fraction = 0.01
  c.data.num_val_batches = 8
  c.data.passkey_rate = 0.02
  c.optim.learning_rate = 6e-4
  c.optim.warmup_steps = 500
  c.num_steps = 20_000
  c.log_every = 20
  c.eval_every = 500
  c.checkpoint.every = 1000
  if arg == "tiny":
    return shrink_for_cpu(c)
  if arg:
    raise ValueError(f"configs/decoder_125m.py: unknown argument {arg!r} (use '' or 'tiny')")
  return c


def get_sweep():
  """Learning-rate x schedule sweep (configs/sweep.py runs each in its own workdir)."""
  return [{"optim.learning_rate": lr, "optim.schedule": s} for lr in (3e-4, 6e-4, 1.2e-3) for s in ("cosine", "wsd")]
