"""Context extension by RoPE scaling, measured on retrieval: the base decoder of configs/retrieval_base.py
(L0 = 128, compact passkey + MQAR + text), extended s = 8x with a short continued training run (Position
Interpolation, Chen et al., arXiv 2306.15595; NTK-aware scaling; YaRN, Peng et al., arXiv 2309.00071).

The argument is STAGE[,VARIANT][,tiny]:

  base                       the base run (configs/retrieval_base.py)
  none|linear|ntk|yarn|yarn_notemp
                             restore the base params (config.init_from, by default runs/extension/base),
                             switch RoPE scaling to that rule with factor 8 (yarn_notemp: YaRN with its
                             attention temperature set to 1) and train 8 * L0 = 1024 tokens per row for
                             200 steps of 4 rows, constant learning rate 3e-4 after a 10-step warm-up.
  VARIANT local              the second layer a sliding window of 32 < L0 (pattern "GL", ModernBERT's order:
                             global first; local layers keep unscaled RoPE, as in Gemma). Global first
                             because the smeared-key match happens on the embeddings: on MQAR rows alone
                             (benchmarks/mqar_search.py's setup, 600 steps) "GL" reached 98.4% at L0 and
                             "LG" 13.5%, and an "LG" base learned passkey (100%) but not MQAR (14%).
  VARIANT dsa                the first layer DSA with top_k = 32 < L0 (pattern "DG"): does the lightning
                             indexer still select the key at 8x?

python train.py --config=configs/extend.py:base --workdir=runs/extension/base
python train.py --config=configs/extend.py:yarn --workdir=runs/extension/yarn --config.init_from=runs/extension/base

dynamic_ntk has no fine-tune stage: its frequencies depend on the current length, so a fine-tune at a fixed
8 * L0 is a static NTK fine-tune; it is measured zero-shot (an eval override) only.
"""

from configs import retrieval_base
from training.config import shrink_for_cpu

L0 = retrieval_base.L0
FACTOR = 8
BASE_WORKDIR = "runs/extension/base"
RULES = ("none", "linear", "ntk", "yarn", "yarn_notemp")  # the stages that fine-tune
ZERO_SHOT_RULES = RULES + ("dynamic_ntk",)
VARIANTS = ("local", "dsa")
FINETUNE_LR = 3e-4


def scaling(rule: str, l0: int) -> dict:
  """model.rope_scaling of `rule` (ZERO_SHOT_RULES) at FACTOR x `l0`."""
  if rule not in ZERO_SHOT_RULES:
    raise ValueError(f"configs/extend.py: unknown rule {rule!r}; use one of {ZERO_SHOT_RULES}")
  kind = "yarn" if rule == "yarn_notemp" else rule
  return dict(kind=kind, factor=float(FACTOR), original_max_len=l0,
              attention_factor=1.0 if rule == "yarn_notemp" else None)


def apply_variant(c, variant: str):
  """Make `c` the local (pattern "GL", window 32) or DSA (pattern "DG", top_k 32) variant in place."""
  if variant == "local":
    c.model.update(attention_pattern="GL", window=(32, 0))
  elif variant == "dsa":
    c.model.update(attention_pattern="DG", dsa_top_k=32, dsa_index_heads=2, dsa_index_dim=16, dsa_rope_dim=8)


def get_config(arg: str = "base"):
  stage, *rest = arg.split(",") if arg else ["base"]
  tiny = rest[-1:] == ["tiny"]
  variant = rest[:-1] if tiny else rest
  if stage not in ("base",) + RULES or variant not in ([], ["local"], ["dsa"]):
    raise ValueError(f"configs/extend.py: bad argument {arg!r}; use base|{'|'.join(RULES)}[,local|,dsa][,tiny]")
  c = retrieval_base.get_config("tiny" if tiny else "")
  if variant:
    apply_variant(c, variant[0])
    if tiny:
      c.model.update(window=(8, 0), dsa_top_k=8)
  if stage == "base":
    return c
  l0 = c.data.seq_len
  c.model.max_len = FACTOR * l0
  c.model.rope_scaling = scaling(stage, l0)
  c.data.seq_len = FACTOR * l0
  c.init_from = BASE_WORKDIR
  if tiny:
    c.data.update(batch_size=2, episode_min_len=l0)
    return c
  # A short continued run, PI's recipe in miniature; episodes of L0 .. 8 L0 so every distance is trained.
  # lr 3e-4 = a tenth of the base's peak (PI and YaRN fine-tune at 2e-5 after pre-training at ~3e-4): at
  # 1e-3 the 200 steps erased the base's retrieval heads (passkey 0% at every length, L0 included).
  c.data.update(batch_size=4, num_val_batches=2, episode_min_len=l0)
  c.optim.update(learning_rate=FINETUNE_LR, schedule="constant", warmup_steps=10)
  c.update(num_steps=200, log_every=20, eval_every=200)
  c.checkpoint.every = 200
  return c
