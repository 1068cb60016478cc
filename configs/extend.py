"""Context extension by RoPE scaling: a base decoder trained at L0, then extended s = 8x with a short
continued training run (Position Interpolation, Chen et al., arXiv 2306.15595; NTK-aware scaling; YaRN,
Peng et al., arXiv 2309.00071).

The argument picks the stage, optionally followed by ",tiny" for a CPU smoke run:

  base                    train the base decoder at L0 = 384 tokens, no RoPE scaling (1200 steps of
                          8 rows, half of them passkey prompts)
  none|linear|ntk|yarn    restore the base params (config.init_from, by default runs/extension/base),
                          switch RoPE scaling to that rule with factor 8, and train s * L0 = 3072 tokens
                          per row for num_steps = 30 steps of 2 rows (--config.num_steps=N for more)

python train.py --config=configs/extend.py:base --workdir=runs/extension/base
python train.py --config=configs/extend.py:yarn --workdir=runs/extension/yarn --config.init_from=runs/extension/base

L0 = 384 rather than 256: the byte-level passkey prompt (data/passkey.py) needs 254 tokens before any
filler, so 384 is the shortest L0 at which the base model can be trained and tested on passkey retrieval
at several depths. Every layer is global: the experiment is about how RoPE scaling reaches past L0, and
a sliding-window layer never sees a distance longer than its window. `--config.model.attention_pattern=LG`
extends the demo's local/global pattern the same way (local layers keep unscaled RoPE, as in Gemma).
"""

from attention.rope import SCALING_KINDS
from training.config import default_config, shrink_for_cpu

L0 = 384
FACTOR = 8
BASE_WORKDIR = "runs/extension/base"


def _base():
  c = default_config("decoder_tiny")
  c.model.update(vocab_size=272, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                 mlp_dim=384, max_len=L0, attention_pattern="G")
  c.data.update(seq_len=L0, batch_size=8, val_fraction=0.02, num_val_batches=4, passkey_rate=0.5)
  c.optim.update(learning_rate=3e-3, warmup_steps=30, weight_decay=0.1)
  c.update(num_steps=1200, log_every=20, eval_every=200)
  c.checkpoint.every = 200
  return c


def get_config(arg: str = "base"):
  stage, *rest = arg.split(",") if arg else ["base"]
  if rest not in ([], ["tiny"]) or stage not in ("base",) + SCALING_KINDS:
    raise ValueError(f"configs/extend.py: bad argument {arg!r}; use base|{'|'.join(SCALING_KINDS)}[,tiny]")
  tiny = rest == ["tiny"]
  c = _base()
  if tiny:
    c = shrink_for_cpu(c)
    c.model.max_len = 32
    c.data.passkey_rate = 0.0  # a passkey prompt needs >= 254 tokens
  if stage == "base":
    return c
  l0 = c.data.seq_len
  c.model.max_len = FACTOR * l0
  c.model.rope_scaling.update(kind=stage, factor=float(FACTOR), original_max_len=l0)
  c.data.seq_len = FACTOR * l0
  c.init_from = BASE_WORKDIR
  if tiny:
    c.data.batch_size = 2
    return c
  # A short continued run: constant learning rate after a brief warm-up, PI's recipe in miniature.
  # Fewer passkey rows than the base: the short run is mostly for long natural documents.
  c.data.update(batch_size=2, num_val_batches=2, passkey_rate=0.2)
  c.optim.update(learning_rate=1e-3, schedule="constant", warmup_steps=5)
  c.update(num_steps=30, log_every=5, eval_every=30)
  c.checkpoint.every = 30
  return c
