"""ModernBERT-base (Warner et al., 2024, arXiv 2412.13663) pre-training with MLM (30% masking) at 8K
context: global attention every third layer, a 128-token window elsewhere. For accelerators; `tiny` runs
the same architecture at toy size on the CPU.

python train.py --config=configs/modernbert_base.py --workdir=/tmp/modernbert_base --config.data.corpus='("/data/*.txt",)'
"""

from training.config import default_config, sized


def get_config(arg: str = "", *, preset: str = "modernbert_base", batch_size: int = 64,
               learning_rate: float = 8e-4):
  """ModernBERT's recipe; configs/modernbert_large.py reuses it with its own preset, batch and rate."""
  c = default_config(preset)
  c.model.dtype = "bfloat16"  # float32 master weights (param_dtype), bf16 compute
  c.data.update(seq_len=8192, batch_size=batch_size, val_fraction=0.005, num_val_batches=8)
  # ModernBERT trains with warmup-stable-decay.
  c.optim.update(learning_rate=learning_rate, schedule="wsd", warmup_steps=2000, weight_decay=1e-5, b2=0.98,
                 eps=1e-6)
  c.update(num_steps=100_000, log_every=50, eval_every=1000)
  c.checkpoint.every = 1000
  c.mesh.update(data=1, fsdp=-1)
  return sized(c, arg, f"configs/{preset}.py")
