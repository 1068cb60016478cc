"""A Llama-3.2-1B-shaped decoder (GQA 32/8) at 4K context, FSDP over all devices, bf16 compute, WSD
schedule so the run can be extended. For accelerators; `tiny` runs the same architecture at toy size on
the CPU.

python train.py --config=configs/decoder_1b.py --workdir=/tmp/decoder_1b
"""

from training.config import default_config, sized


def get_config(arg: str = ""):
  c = default_config("decoder_1b")
  c.model.dtype = "bfloat16"
  c.data.update(seq_len=4096, batch_size=256, val_fraction=0.005, num_val_batches=8, passkey_rate=0.02)
  c.optim.update(learning_rate=3e-4, schedule="wsd", warmup_steps=1000, grad_accum_steps=8)
  c.update(num_steps=50_000, log_every=10, eval_every=1000)
  c.checkpoint.every = 500
  c.mesh.update(data=1, fsdp=-1)
  return sized(c, arg, "configs/decoder_1b.py")
