"""Progressive context extension of decoder_125m: 2K -> 8K -> 32K -> 128K, each stage a short continued
run that restores the previous stage's params (config.init_from), as ProLong (Gao et al., arXiv
2410.02660) and Llama 3.1 grow the context in steps instead of jumping to the final length.

Two RoPE rules per stage, picked by the argument:
  yarn  YaRN (Peng et al., arXiv 2309.00071) with factor L / 2048 relative to the ORIGINAL length (not to
        the previous stage's), so every stage interpolates the same base frequencies further;
  abf   Adjusted Base Frequency (Xiong et al., arXiv 2309.16039; ProLong, Llama 3.1): no scaling rule,
        the RoPE base theta grows per stage (ABF_THETA).
The argument is "STAGE[,yarn|abf][,tiny]": STAGE in 2k|8k|32k|128k (2k is the base run, no RoPE change),
",tiny" runs the same stages at 1/64 of the lengths with the toy model on the CPU.

python train.py --config=configs/extend_progressive.py:2k --workdir=runs/extend_progressive/2k
python train.py --config=configs/extend_progressive.py:8k,yarn --workdir=runs/extend_progressive/8k_yarn
python train.py --config=configs/extend_progressive.py:32k,yarn --workdir=runs/extend_progressive/32k_yarn
python train.py --config=configs/extend_progressive.py:128k,yarn --workdir=runs/extend_progressive/128k_yarn

Long stages use remat "full" and a chunked loss (memory plan: docs/results.md, "Training memory at 128K");
the 128K stage with context parallelism (mesh.context) where one device does not hold it.
"""

from training.config import default_config, shrink_for_cpu

STAGES = {"2k": 2048, "8k": 8192, "32k": 32768, "128k": 131072}
METHODS = ("yarn", "abf")
L0 = STAGES["2k"]
ABF_THETA = {2048: 10_000.0, 8192: 500_000.0, 32768: 2_000_000.0, 131072: 8_000_000.0}
STEPS = {2048: 20_000, 8192: 1000, 32768: 500, 131072: 250}  # tokens per stage shrink as rows grow
TINY = 64  # ",tiny" divides every length by this
WORKDIR = "runs/extend_progressive"


def workdir(stage: str, method: str) -> str:
  """Where a stage's run lives, so the next stage's init_from finds it."""
  return f"{WORKDIR}/{stage}" if stage == "2k" else f"{WORKDIR}/{stage}_{method}"


def get_config(arg: str = "2k"):
  parts = (arg or "2k").split(",")
  stage, rest = parts[0], parts[1:]
  tiny = rest[-1:] == ["tiny"]
  rest = rest[:-1] if tiny else rest
  method = rest[0] if rest else "yarn"
  if stage == "tiny" and not rest:  # the plain `tiny` smoke run of tests/test_configs.py: the base stage
    stage, tiny = "2k", True
  if stage not in STAGES or method not in METHODS or len(rest) > 1:
    raise ValueError(f"configs/extend_progressive.py: bad argument {arg!r}; use "
                     f"{'|'.join(STAGES)}[,{'|'.join(METHODS)}][,tiny]")
  length = STAGES[stage]
  c = default_config("decoder_125m")
  c.model.update(dtype="bfloat16", max_len=length, remat="none" if length <= L0 else "full")
  c.data.update(seq_len=length, batch_size=max(1, 64 * L0 // length), val_fraction=0.01, num_val_batches=2)
  c.loss_chunk_tokens = 0 if length <= L0 else 8192
  c.optim.update(learning_rate=6e-4 if length == L0 else 1e-4, warmup_steps=min(500, STEPS[length] // 10))
  c.update(num_steps=STEPS[length], log_every=20, eval_every=STEPS[length] // 4)
  c.checkpoint.every = STEPS[length] // 4
  if tiny:
    c = shrink_for_cpu(c)
    length //= TINY
    c.model.max_len = length
    c.data.update(seq_len=length, batch_size=max(1, 8 * L0 // TINY // length))
    c.loss_chunk_tokens = 0 if length <= L0 // TINY else 64
  if stage == "2k":
    return c
  previous = list(STAGES)[list(STAGES).index(stage) - 1]
  c.init_from = workdir(previous, method)
  base = L0 // TINY if tiny else L0
  if method == "yarn":
    c.model.rope_scaling.update(kind="yarn", factor=float(length // base), original_max_len=base)
  else:
    c.model.rope_theta = ABF_THETA[STAGES[stage]]
  return c
