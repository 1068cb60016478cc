"""Smeared keys against plain keys on MQAR alone, side by side: the measurement behind configs/retrieval_base.py's
choice of model.smeared_keys.

python -m benchmarks.mqar_search [--steps=600] [--out=docs/results/mqar_smeared_keys.json]

Each setting (smeared or plain keys, attention pattern: "G" is two global layers, "LG" / "GL" a sliding window
of 32 first / second) trains the base's decoder shape (d_model 64, 2 layers, 4 heads of 16, byte vocabulary
272, RoPE theta 1e4) from the same seed on the same rows: MQAR episodes of 16-128 tokens packed into 128-token
rows (data/retrieval.py), loss on the answers only, batch 32, AdamW lr 3e-3 (warm-up 100, cosine to 10%),
b2 0.95, weight decay 0.1. Every --every steps: held-out exact match (teacher-forced argmax at every query)
on 64 rows of 128 tokens and 8 rows of 1024 (8x, no RoPE scaling).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from data import mqar, retrieval
from data.tokenizer import ByteTokenizer
from eval import mqar as mqar_eval
from models import ModelConfig, build_model

flags.DEFINE_integer("steps", 600, "Training steps per setting.")
flags.DEFINE_integer("every", 100, "Evaluate every this many steps.")
flags.DEFINE_string("out", "docs/results/mqar_smeared_keys.json", "Where the curves go.")
flags.DEFINE_list("settings", ["smeared_G", "plain_G", "smeared_LG", "smeared_GL"], "KEYS_PATTERN settings to run.")
FLAGS = flags.FLAGS
L0, BATCH, LR = 128, 32, 3e-3


def _accuracy(model, tok, length: int, samples: int) -> float:
  """eval's MQAR exact match (its fixed held-out seeds) at one length."""
  return mqar_eval.mqar_accuracy(model, tok, [length], samples=samples)["accuracy"][0]


def _parse(setting: str) -> tuple[str, str]:
  keys, _, pattern = setting.partition("_")
  if keys not in ("smeared", "plain") or not pattern or set(pattern) - set("GL"):
    raise ValueError(f"--settings: {setting!r} must be smeared_PATTERN or plain_PATTERN, PATTERN of G and L")
  return keys, pattern


def run(setting: str) -> list[dict]:
  keys, pattern = _parse(setting)
  tok = ByteTokenizer()
  cfg = ModelConfig(vocab_size=272, d_model=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=192,
                    max_len=8 * L0, smeared_keys=keys == "smeared", attention_impl="xla", attention_pattern=pattern,
                    window=(32, 0))
  model = build_model(cfg, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adamw(optax.warmup_cosine_decay_schedule(0, LR, 100, FLAGS.steps, LR * 0.1),
                                         b2=0.95, weight_decay=0.1), wrt=nnx.Param)

  def make(n, seed):
    ex = mqar.mqar_example(tok, n, seed)
    return ex.tokens, ex.answer_weights()

  @nnx.jit
  def step(model, opt, batch):
    def loss_fn(model):  # next-token loss on the answers, never across episodes
      tokens, seg = batch["tokens"], batch["segment_ids"]
      logits = model(tokens[:, :-1], batch["positions"][:, :-1], seg[:, :-1])  # [B, L0, V]
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
      w = batch["loss_weights"][:, :-1] * (seg[:, 1:] == seg[:, :-1])
      return (nll * w).sum() / w.sum()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng, curve, t0 = np.random.default_rng(1), [], time.time()
  for i in range(1, FLAGS.steps + 1):
    rows = [retrieval.episodes_row(make, tok, L0 + 1, int(rng.integers(2**31)), 16, weighted=True)
            for _ in range(BATCH)]
    loss = step(model, opt, {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]})
    if i % FLAGS.every == 0:
      curve.append({"step": i, "answer_loss": round(float(loss), 4), "acc_128": _accuracy(model, tok, L0, 64),
                    "acc_1024": _accuracy(model, tok, 8 * L0, 8), "wall_s": round(time.time() - t0, 1)})
      print(setting, json.dumps(curve[-1]), flush=True)
  return curve


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for setting in FLAGS.settings:
    _parse(setting)  # every setting checked before the first one trains
  out = {"setup": __doc__.split("\n\n")[2].replace("\n", " "), "machine": "2-core CPU"}
  out.update({setting: run(setting) for setting in FLAGS.settings})
  with open(FLAGS.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
