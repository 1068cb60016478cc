"""The GPU-scale version of the retrieval extension experiment: decoder_125m trained at L0 = 2K, extended
with YaRN to 16K (8x) and to 32K (16x), each stage about 10 minutes of one H200.

python train.py --config=configs/extend_gpu.py:base     --workdir=runs/gpu_ext/base
python train.py --config=configs/extend_gpu.py:yarn16k  --workdir=runs/gpu_ext/yarn16k --config.init_from=runs/gpu_ext/base
python train.py --config=configs/extend_gpu.py:yarn32k  --workdir=runs/gpu_ext/yarn32k --config.init_from=runs/gpu_ext/base
python -m eval --workdir=runs/gpu_ext/yarn32k --tasks=perplexity,passkey,mqar --lengths=2048,8192,16384,32768

Step counts come from an estimated, not measured, throughput (no H200 was available to this work): training
FLOPs per token = 6 x parameters + 3 x attention_flops_per_token(L) (models/__init__.py), at an assumed 35%
of the H200's 989 dense bf16 TFLOP/s. The estimate is in ESTIMATE below; after the first log line of a run,
replace it with the tokens_per_sec that train.py reports (num_steps = 600 s x tokens/s / tokens per step).
`tiny` (",tiny" after the stage) runs each stage's data and schedule at toy size on the CPU (the tests).
"""

import models
from configs import decoder_125m
from training.config import shrink_for_cpu

L0 = 2048
STAGES = {"base": (1, 64), "yarn16k": (8, 8), "yarn32k": (16, 4)}  # stage: (factor over L0, rows per step)
SECONDS = 600
PEAK_FLOPS, MFU = 989e12, 0.35


def tokens_per_second(cfg: models.ModelConfig, seq_len: int) -> float:
  """The estimated training throughput (module docstring)."""
  flops = 6 * models.param_count(cfg) + 3 * models.attention_flops_per_token(cfg, seq_len)
  return PEAK_FLOPS * MFU / flops


def get_config(arg: str = "base"):
  stage, *rest = (arg or "base").split(",")
  if stage not in STAGES or rest not in ([], ["tiny"]):
    raise ValueError(f"configs/extend_gpu.py: bad argument {arg!r}; use {'|'.join(STAGES)}[,tiny]")
  factor, rows = STAGES[stage]
  c = decoder_125m.get_config("")
  # Retrieval rows, smeared keys and weighted answers as in configs/retrieval_base.py (the choices that made
  # the CPU base retrieve; episodes from 256 tokens up); mostly natural text.
  c.model.smeared_keys = True
  c.data.update(passkey_rate=0.1, passkey_prompt="compact", mqar_rate=0.2, episode_min_len=256,
                mqar_loss="answers")
  seq = L0 * factor
  c.model.max_len = seq
  c.data.update(seq_len=seq, batch_size=rows)
  model_cfg = models.ModelConfig.from_dict(c.model.to_dict())
  steps = int(SECONDS * tokens_per_second(model_cfg, seq) / (seq * rows))
  if stage == "base":
    c.optim.update(learning_rate=6e-4, warmup_steps=min(500, steps // 10))
  else:
    c.model.rope_scaling.update(kind="yarn", factor=float(factor), original_max_len=L0)
    c.init_from = "runs/gpu_ext/base"
    # YaRN's recipe: a constant learning rate after a short warm-up (2e-5 for LLaMA 7B; 125M takes more).
    c.optim.update(learning_rate=1e-4, schedule="constant", warmup_steps=20)
  c.update(num_steps=steps, eval_every=max(1, steps // 4))
  c.checkpoint.every = max(1, steps // 2)
  if rest == ["tiny"]:
    c = shrink_for_cpu(c)
    c.data.update(episode_min_len=16, mqar_rate=0.5)
    if stage != "base":
      c.model.max_len = 32 * factor
      c.data.update(seq_len=32 * factor, batch_size=2)
      c.model.rope_scaling.original_max_len = 32
  return c
