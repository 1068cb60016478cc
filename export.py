"""Export a train.py run as a Hugging Face checkpoint: python export.py --workdir=DIR --out=FOLDER [--step=N]
[--family=llama|qwen2|mistral|modernbert] [--max_shard_bytes=N].

Writes config.json + safetensors (models/hf_export.py) and, for a run trained with a Hugging Face
tokenizer, its tokenizer files. The run is read as eval reads it (training/restore.py: the newest
checkpoint that restores, checksums checked). A model no family computes exactly (DSA layers, LOCAL
layers outside qwen2/mistral, ...) is refused in one line naming the field, before any weight is read.
"""

import os
import shutil

from absl import flags

from data.tokenizer import get_tokenizer
from models.hf_export import FAMILIES, TOKENIZER_FILES, hf_config, save_hf
from training import cli, from_config_dict, restore

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py run directory (holding checkpoints/).")
flags.DEFINE_string("out", None, "Output folder (its safetensors files are replaced).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest that restores).")
flags.DEFINE_enum("family", None, FAMILIES, "Hugging Face family (default: inferred from the model config).")
flags.DEFINE_integer("max_shard_bytes", 5 * 2**30, "Largest safetensors shard in bytes.")
flags.mark_flags_as_required(["workdir", "out"])


def _tokenizer_files(tokenizer_path: str) -> tuple[list[str], dict]:
  """(Hugging Face tokenizer files to copy, token ids for config.json) of a run's data.tokenizer_path."""
  tok = get_tokenizer(tokenizer_path or None)
  ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
  folder = getattr(tok, "folder", None)  # only a Hugging Face tokenizer has files to ship
  if folder is None:
    return [], ids
  return [os.path.join(folder, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))], ids


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  _, saved = restore.saved_config(FLAGS.workdir, FLAGS.step)
  hf_config(from_config_dict(saved).model, FLAGS.family)  # a refusal costs no weight read
  run = restore.restore(FLAGS.workdir, FLAGS.step)
  files, ids = _tokenizer_files(run.config.data.tokenizer_path)
  save_hf(run.model, run.config.model, FLAGS.out, family=FLAGS.family, max_shard_bytes=FLAGS.max_shard_bytes,
          token_ids=ids)
  for path in files:
    shutil.copy(path, os.path.join(FLAGS.out, os.path.basename(path)))
  arch = hf_config(run.config.model, FLAGS.family)["architectures"][0]
  print(f"exported step {run.step} of {FLAGS.workdir} as {arch} to {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
