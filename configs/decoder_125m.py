"""A GPT-2-small-sized (125M) Llama-style decoder at 2K context, bf16 compute. For one accelerator or a
small slice; `tiny` runs the same architecture at toy size on the CPU.

python train.py --config=configs/decoder_125m.py --workdir=/tmp/decoder_125m
"""

from training.config import default_config, sized


def get_config(arg: str = ""):
  c = default_config("decoder_125m")
  c.model.dtype = "bfloat16"
  c.data.update(seq_len=2048, batch_size=64, val_fraction=0.01, num_val_batches=8, passkey_rate=0.02)
  c.optim.update(learning_rate=6e-4, warmup_steps=500)
  c.update(num_steps=20_000, log_every=20, eval_every=500)
  c.checkpoint.every = 1000
  return sized(c, arg, "configs/decoder_125m.py")


def get_sweep():
  """Learning-rate x schedule sweep (configs/sweep.py runs each in its own workdir)."""
  return [{"optim.learning_rate": lr, "optim.schedule": s} for lr in (3e-4, 6e-4, 1.2e-3) for s in ("cosine", "wsd")]
