"""configs/extend_hf.py dry run: a tiny random Llama with its own BPE tokenizer.json (both built here) is
extended 8x with YaRN, trained 2 steps through train.py's train_and_evaluate on a folder of .jsonl.gz and
Parquet documents, exported by `python export.py --workdir=RUN --out=FOLDER`, and the export,
loaded by transformers, gives the trained checkpoint's logits past the original length."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from training.restore import restore
from test_corpus_formats import build_tokenizer, write_corpus
from training import train_and_evaluate

torch = pytest.importorskip("torch", reason="the HF conformance tests need torch (CPU), the [test] extra")
transformers = pytest.importorskip("transformers", reason="the HF conformance tests need transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extend_hf_dry_run_trains_and_exports(tmp_path):
  from configs import extend_hf

  folder = tmp_path / "llama"
  build_tokenizer(folder / "tokenizer.json")
  hf_cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                    bos_token_id=0, eos_token_id=1)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(hf_cfg).save_pretrained(folder)
  c = extend_hf.get_config(f"{folder},tiny")
  assert (c.model.rope_scaling.kind, c.model.rope_scaling.factor, c.model.rope_scaling.original_max_len,
          c.data.seq_len) == ("yarn", 8.0, 16, 128)
  c.data.update(corpus=(str(write_corpus(tmp_path / "corpus")),), text_field="content")
  c.mesh.data = 1
  run = tmp_path / "run"
  result = train_and_evaluate(c, str(run))
  assert result["step"] == 2 and np.isfinite(result["val_loss"])

  out = tmp_path / "exported"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, "export.py", f"--workdir={run}", "--step=2", f"--out={out}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "as LlamaForCausalLM" in done.stdout and os.path.isfile(out / "tokenizer.json")
  with open(out / "config.json") as f:
    written = json.load(f)
  assert written["rope_scaling"] == {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
                                     "beta_fast": 32.0, "beta_slow": 1.0}
  assert (written["max_position_embeddings"], written["bos_token_id"], written["eos_token_id"]) == (128, 0, 1)

  ours = restore(str(run), 2, {"model.attention_impl": "xla"})
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = np.random.default_rng(0).integers(0, 300, (1, 100))  # > 16 = L0
  with torch.no_grad():
    expected = theirs(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours.model(jnp.asarray(ids, jnp.int32))), expected, rtol=1e-4, atol=1e-4)
  original = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
  assert not torch.equal(original.model.norm.weight, theirs.model.norm.weight)  # the fine-tune moved the weights
