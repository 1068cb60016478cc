"""ModernBERT-large (Warner et al., 2024, arXiv 2412.13663) pre-training with MLM (30% masking) at 8K
context: the modernbert_base recipe with the large preset (28 layers, 1024 wide), a smaller batch and rate.

python train.py --config=configs/modernbert_large.py --workdir=/tmp/modernbert_large --config.data.corpus='("/data/*.txt",)'
"""

from configs import modernbert_base


def get_config(arg: str = ""):
  return modernbert_base.get_config(arg, preset="modernbert_large", batch_size=32, learning_rate=5e-4)
