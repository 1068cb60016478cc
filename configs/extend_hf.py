"""Extend a pretrained Hugging Face Llama-family model (Llama, Qwen2, Mistral without sliding window) 8x
with YaRN (Peng et al., arXiv 2309.00071), fine-tune it on a local corpus, then export it back.

The argument is the model's local folder (config.json, *.safetensors, tokenizer.json), optionally followed
by ",tiny" for a CPU dry run of two steps:

  python train.py --config=configs/extend_hf.py:/models/TinyLlama-1.1B --workdir=runs/llama_yarn \\
      --config.data.corpus="('my_corpus/',)" --config.data.text_field=text
  python export.py --workdir=runs/llama_yarn --out=exported/llama_yarn

L0 is the model's max_position_embeddings; the run trains on rows of 8 * L0 tokens (batch 1, so a 4K model
trains at 32K: give it the memory, or lower --config.model.rope_scaling.factor, --config.model.max_len and
--config.data.seq_len together). The model's own tokenizer (tokenizer.json in the folder) encodes the
corpus; the params start from the folder (init_from). A model that already scales its RoPE (Llama 3.1 /
3.2's llama3 rule) is refused: YaRN would replace its rule, not extend it.
"""

import json
import os

import ml_collections

from models.hf_import import config_from_hf
from training.config import default_config

FACTOR = 8


def get_config(arg: str = ""):
  folder, *rest = (arg or "").split(",")
  if not folder or rest not in ([], ["tiny"]):
    raise ValueError(f"configs/extend_hf.py: bad argument {arg!r}; use FOLDER[,tiny] (a Hugging Face model folder)")
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise ValueError(f"configs/extend_hf.py: {folder!r} has no config.json (a Hugging Face model folder)")
  if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
    raise ValueError(f"configs/extend_hf.py: {folder!r} has no tokenizer.json; the corpus must be encoded with "
                     "the model's own tokenizer")
  with open(os.path.join(folder, "config.json")) as f:
    model = config_from_hf(json.load(f))
  if model.arch != "decoder" or model.rope_scaling.kind != "none" or model.pattern_string() != "G":
    raise ValueError(f"configs/extend_hf.py: {folder!r} must be a decoder with unscaled RoPE and only global "
                     f"layers, got arch={model.arch!r}, rope_scaling={model.rope_scaling.kind!r}, "
                     f"attention_pattern={model.pattern_string()!r}")
  l0 = model.max_len
  c = default_config("decoder_tiny")
  c.model = ml_collections.ConfigDict(model.to_dict())
  c.model.update(max_len=FACTOR * l0, attention_impl="auto")
  c.model.rope_scaling.update(kind="yarn", factor=float(FACTOR), original_max_len=l0)
  c.data.update(tokenizer_path=folder, seq_len=FACTOR * l0, batch_size=1, val_fraction=0.02, num_val_batches=4)
  # A short continued run at a small constant learning rate: YaRN needs ~0.1% of pre-training (sec. 4).
  c.optim.update(learning_rate=2e-5, schedule="constant", warmup_steps=20, weight_decay=0.0)
  c.update(init_from=folder, num_steps=400, log_every=10, eval_every=100)
  c.checkpoint.every = 100
  if rest == ["tiny"]:
    c.data.update(batch_size=2, max_documents=40, num_val_batches=1)
    c.optim.update(warmup_steps=1)
    c.update(num_steps=2, log_every=1, eval_every=2)
    c.checkpoint.every = 2
  return c
