"""A tiny causal decoder on the built-in corpus (the stdlib's sources): tests and quick CPU runs.

python train.py --config=configs/decoder_tiny.py --workdir=/tmp/decoder_tiny
"""

from training.config import default_config, shrink_for_cpu


def get_config(arg: str = "", *, preset: str = "decoder_tiny"):
  """The tiny recipe; configs/encoder_tiny.py reuses it with the encoder preset (the objective follows
  the preset's arch: causal LM or MLM)."""
  c = default_config(preset)
  c.model.vocab_size = 272  # 256 bytes + 6 special tokens, rounded up to a multiple of 16
  c.model.max_len = 128
  c.data.seq_len = 128
  c.data.batch_size = 8
  c.data.max_documents = 200
  c.data.num_val_batches = 2
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 10
  c.num_steps = 200
  c.log_every = 10
  c.eval_every = 50
  c.checkpoint.every = 100
  if arg == "tiny":
    return shrink_for_cpu(c)
  if arg:
    raise ValueError(f"configs/{preset}.py: unknown argument {arg!r} (use '' or 'tiny')")
  return c


def get_sweep():
  """Two learning rates: the smallest sweep (python -m configs.sweep --config=configs/decoder_tiny.py:tiny)."""
  return [{"optim.learning_rate": lr} for lr in (1e-3, 3e-3)]
