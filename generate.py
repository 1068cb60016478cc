"""Generate text from a train.py run: python generate.py --workdir=DIR --prompt=TEXT [--max_new_tokens=N]
[--step=N] [--temperature=T] [--top_p=P] [--seed=S].

Restores the run as eval does (training/restore.py: the newest checkpoint that restores, checksums
checked), encodes the prompt with the run's own tokenizer (bytes, or its data.tokenizer_path), decodes
with models/generate.py's KV cache and prints the prompt followed by its continuation. Greedy at the
default temperature 0; generation stops early at the tokenizer's end-of-sequence token.
"""

import jax
from absl import flags

from data.tokenizer import get_tokenizer
from models.generate import generate
from training import cli, restore

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py run directory (holding checkpoints/).")
flags.DEFINE_string("prompt", None, "The text to continue.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest that restores).")
flags.DEFINE_float("temperature", 0.0, "Softmax temperature; 0 decodes greedily.")
flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1] when sampling (temperature > 0).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["workdir", "prompt"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {FLAGS.max_new_tokens}")
  _, saved = restore.saved_config(FLAGS.workdir, FLAGS.step)
  tokenizer = get_tokenizer(saved["data"]["tokenizer_path"] or None)
  prompt = [int(t) for t in tokenizer.encode(FLAGS.prompt, bos=True)]  # documents were trained with a BOS
  # RoPE models have no position table: max_len only bounds the cache, so it grows to fit the request.
  run = restore.restore(FLAGS.workdir, FLAGS.step, min_max_len=len(prompt) + FLAGS.max_new_tokens)
  new = generate(run.model, [prompt], max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                 top_p=FLAGS.top_p, rng=jax.random.key(FLAGS.seed), eos_id=tokenizer.eos_id)[0].tolist()
  if tokenizer.eos_id in new:
    new = new[:new.index(tokenizer.eos_id)]
  print(FLAGS.prompt + tokenizer.decode(new))


if __name__ == "__main__":
  cli.run(main)
