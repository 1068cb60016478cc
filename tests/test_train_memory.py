"""benchmarks/train_memory: the compiled bytes of a whole train step land in the JSON file."""

import json

from benchmarks import train_memory


def test_tiny_preset_writes_the_json_keys(tmp_path):
  path = tmp_path / "row.json"
  train_memory.main(["--preset=decoder_tiny", "--seq_len=64", "--remat=full", "--loss_chunk_tokens=16",
                     "--attention_pattern=LG", f"--json={path}"])
  r = json.loads(path.read_text())
  for key in ("temp_bytes", "argument_bytes", "output_bytes"):
    assert isinstance(r[key], int) and r[key] > 0, key
  # Arguments hold at least params + two AdamW moments in float32.
  assert r["argument_bytes"] >= 3 * 4 * r["param_count"]
  assert (r["seq_len"], r["remat"], r["attention_pattern"]) == (64, "full", "LG")
