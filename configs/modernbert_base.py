"""ModernBERT-base (Warner et al., 2024, arXiv 2412.13663) pre-training with MLM (30% masking) at 8K
context: global attention every third layer, a 128-token window elsewhere. For accelerators; `tiny` runs
the same architecture at toy size on the CPU.

python train.py --config=configs/modernbert_base.py --workdir=/tmp/modernbert_base --config.data.corpus='("/data/*.txt",)'
"""

from training.config import default_config, shrink_for_cpu


def get_config(arg: str = "", *, preset: str = "modernbert_base", batch_size: int = 64,
               learning_rate: float = 8e-4):
  """ModernBERT's recipe; configs/modernbert_large.py reuses it with its own preset, batch and rate."""
  c = default_config(preset)
  c.model.dtype = "bfloat16"  # float32 master weights (param_dtype), bf16 compute
  c.data.seq_len = 8192
  c.data.batch_size = batch_size
  c.data.val_fraction = 0.005
  c.data.num_val_batches = 8
  c.optim.learning_rate = learning_rate
  c.optim.schedule = "wsd"  # ModernBERT trains with warmup-stable-decay
  c.optim.warmup_steps = 2000
  c.optim.weight_decay = 1e-5
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.num_steps = 100_000
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint.every = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  if arg == "tiny":
    return shrink_for_cpu(c)
  if arg:
    raise ValueError(f"configs/{preset}.py: unknown argument {arg!r} (use '' or 'tiny')")
  return c
