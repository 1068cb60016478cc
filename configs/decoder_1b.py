"""A Llama-3.2-1B-shaped decoder (GQA 32/8) at 4K context, FSDP over all devices, bf16 compute, WSD
schedule so the run can be extended. For accelerators; `tiny` runs the same architecture at toy size on
the CPU.

python train.py --config=configs/decoder_1b.py --workdir=/tmp/decoder_1b
"""

from training.config import default_config, shrink_for_cpu


def get_config(arg: str = ""):
  c = default_config("decoder_1b")
  c.model.dtype = "bfloat16"
  c.data.seq_len = 4096
  c.data.batch_size = 256
  c.data.val_fraction = 0.005
  c.data.num_val_batches = 8
  c.data.passkey_rate = 0.02
  c.optim.learning_rate = 3e-4
  c.optim.schedule = "wsd"
  c.optim.warmup_steps = 1000
  c.optim.grad_accum_steps = 8
  c.num_steps = 50_000
  c.log_every = 10
  c.eval_every = 1000
  c.checkpoint.every = 500
  c.mesh.data = 1
  c.mesh.fsdp = -1
  if arg == "tiny":
    return shrink_for_cpu(c)
  if arg:
    raise ValueError(f"configs/decoder_1b.py: unknown argument {arg!r} (use '' or 'tiny')")
  return c
