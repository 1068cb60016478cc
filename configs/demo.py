"""The README's main job: a small decoder trained on the built-in corpus (the installed Python standard
library's sources) with 10% passkey-retrieval rows mixed in, on 2 CPU cores in about 10 minutes. It ends
with a checkpoint and prints the final validation loss and the checkpoint's path.

Sliding-window layers (a 128-token window) alternate with global layers, the Gemma-2 pattern.

python train.py --config=configs/demo.py --workdir=runs/demo
"""

from training.config import default_config, sized


def get_config(arg: str = ""):
  c = default_config("decoder_tiny")
  c.model.update(vocab_size=272, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                 mlp_dim=384, max_len=512, attention_pattern="LG", window=(128, 0))
  c.data.update(seq_len=512, batch_size=8, val_fraction=0.02, num_val_batches=4, passkey_rate=0.1)
  c.optim.update(learning_rate=3e-3, warmup_steps=30, weight_decay=0.1)
  c.update(num_steps=1500, log_every=20, eval_every=500)
  c.checkpoint.every = 500
  return sized(c, arg, "configs/demo.py")
