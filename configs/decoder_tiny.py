"""A tiny causal decoder on the built-in corpus (the stdlib's sources): tests and quick CPU runs.

python train.py --config=configs/decoder_tiny.py --workdir=/tmp/decoder_tiny
"""

from training.config import default_config, sized


def get_config(arg: str = "", *, preset: str = "decoder_tiny"):
  """The tiny recipe; configs/encoder_tiny.py reuses it with the encoder preset (the objective follows
  the preset's arch: causal LM or MLM)."""
  c = default_config(preset)
  c.model.update(vocab_size=272, max_len=128)  # 256 bytes + 6 special tokens, rounded up to a multiple of 16
  c.data.update(seq_len=128, batch_size=8, max_documents=200, num_val_batches=2)
  c.optim.update(learning_rate=3e-3, warmup_steps=10)
  c.update(num_steps=200, log_every=10, eval_every=50)
  c.checkpoint.every = 100
  return sized(c, arg, f"configs/{preset}.py")


def get_sweep():
  """Two learning rates: the smallest sweep (python -m configs.sweep --config=configs/decoder_tiny.py:tiny)."""
  return [{"optim.learning_rate": lr} for lr in (1e-3, 3e-3)]
