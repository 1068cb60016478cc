"""A tiny ModernBERT-style encoder (global every third layer, local window elsewhere) trained with MLM on the
built-in corpus: tests and quick CPU runs. The decoder_tiny recipe with the encoder preset.

python train.py --config=configs/encoder_tiny.py --workdir=/tmp/encoder_tiny
"""

from configs import decoder_tiny


def get_config(arg: str = ""):
  return decoder_tiny.get_config(arg, preset="encoder_tiny")
