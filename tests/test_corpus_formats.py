"""Corpus files of many documents: .jsonl (configurable text field, blank lines counted), .jsonl.gz and
Parquet, named "path#row" relative to the corpus root, so the split is the same wherever the folder lies;
a Hugging Face tokenizer.json built here (BPE) through data.get_tokenizer."""

import gzip
import json
import shutil

import numpy as np
import pytest

from data import HFTokenizer, get_tokenizer, load_documents, load_splits, split_documents

pq = pytest.importorskip("pyarrow.parquet", reason="Parquet corpora need pyarrow")
pa = pytest.importorskip("pyarrow")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizer.json files need the tokenizers library")

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jumbo plans".split()


def texts(n, seed):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, 40)) for _ in range(n)]


def write_corpus(root, field="content"):
  """docs/a.jsonl (with a blank line and an extra field), docs/b.jsonl.gz and c.parquet: 36 documents."""
  (root / "docs").mkdir(parents=True)
  lines = [json.dumps({field: t, "id": i}) for i, t in enumerate(texts(12, 0))]
  (root / "docs" / "a.jsonl").write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n")
  with gzip.open(root / "docs" / "b.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({field: t}) + "\n" for t in texts(12, 1))
  pq.write_table(pa.table({field: texts(12, 2), "n": list(range(12))}), root / "c.parquet", row_group_size=5)
  return root


def build_tokenizer(path, special=("<|begin_of_text|>", "<|end_of_text|>")):
  """A byte-level BPE tokenizer.json trained on WORDS, in the layout Llama 3's file uses."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=list(special),
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts(50, 3), trainer)
  path.parent.mkdir(parents=True, exist_ok=True)
  tok.save(str(path))
  return str(path)


def test_multi_document_files_are_read_by_row(tmp_path):
  root = write_corpus(tmp_path / "corpus")
  docs = load_documents([str(root)], text_field="content")
  names = [d.name for d in docs]
  assert len(docs) == 36 and "docs/a.jsonl#6" in names and "docs/a.jsonl#5" not in names  # line 5 is blank
  assert {"docs/b.jsonl.gz#11", "c.parquet#11"} <= set(names)
  by_name = {d.name: d.text for d in docs}
  assert by_name["c.parquet#7"] == texts(12, 2)[7] and by_name["docs/a.jsonl#6"] == texts(12, 0)[5]
  subset = load_documents([str(root)], max_documents=5, text_field="content")
  assert len(subset) == 5 and all(by_name[d.name] == d.text for d in subset)
  with pytest.raises(ValueError, match="c.parquet.*text_field='text'"):
    load_documents([str(root / "c.parquet")])
  with pytest.raises(ValueError, match="a.jsonl' line 1 has no string field text_field='text'"):
    load_documents([str(root / "docs" / "a.jsonl")])


def test_split_is_unchanged_when_the_corpus_folder_moves(tmp_path):
  root = write_corpus(tmp_path / "here")
  moved = shutil.copytree(root, tmp_path / "elsewhere" / "deeper")
  shutil.rmtree(root)
  load = lambda r: load_splits([str(r)], get_tokenizer(), seq_len=64, val_fraction=0.2, seed=0,
                               text_field="content")
  splits = [load(moved)]
  splits.append(load(shutil.move(str(moved), str(tmp_path / "third"))))
  for a, b in zip(splits[0].train.values(), splits[1].train.values()):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(splits[0].val.values(), splits[1].val.values()):
    np.testing.assert_array_equal(a, b)
  train, val = split_documents(load_documents([str(tmp_path / "third")], text_field="content"), 0.2)
  assert val and train and splits[0].num_val_documents == len(val)


def test_hugging_face_tokenizer_json(tmp_path):
  path = build_tokenizer(tmp_path / "tokenizer.json")
  tok = get_tokenizer(path)
  assert isinstance(tok, HFTokenizer) and isinstance(get_tokenizer(str(tmp_path)), HFTokenizer)  # file or folder
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 1) and tok.vocab_size == 300  # no PAD: EOS pads
  ids = tok.encode("the lazy wizards", bos=True, eos=True)
  assert ids[0] == 0 and ids[-1] == 1 and len(ids) < 12 and tok.decode(ids) == "the lazy wizards"
  with pytest.raises(ValueError, match="no mask token"):
    tok.mask_id
  # A tokenizer_config.json beside the file names the special tokens (as in a model folder).
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|begin_of_text|>",
                                                              "pad_token": {"content": "<|end_of_text|>"}}))
  tok = get_tokenizer(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 0, 1)  # no BOS: documents start with EOS
  build_tokenizer(tmp_path / "bare" / "tokenizer.json", special=("<x>",))
  with pytest.raises(ValueError, match="names no EOS token"):
    get_tokenizer(str(tmp_path / "bare"))


def test_unreadable_corpus_files_name_the_file_or_are_skipped_and_counted(tmp_path, caplog):
  rng = np.random.default_rng(0)
  good = tmp_path / "good"
  good.mkdir()
  (good / "a.txt").write_text("plain text " * 50)
  (good / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e ".encode("latin-1") * 20)  # stray bytes
  assert len(load_documents([str(good)])) == 2
  junk = {"noise.txt": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
          "shard.bin": np.arange(1000, dtype=np.int32).tobytes(),
          "few_controls.txt": bytes(rng.integers(1, 32, 300, dtype=np.uint8)) + b"text" * 10,
          "docs.jsonl": rng.integers(128, 256, 500, dtype=np.uint8).tobytes(),
          "docs.jsonl.gz": b"this is not gzip\n" * 10,
          "table.parquet": b"PAR1 but not really a parquet file",
          "lines.jsonl": b'{"text": "ok"}\n{"text": \n'}
  reasons = {"noise.txt": "is not text: it holds NUL bytes", "shard.bin": "is not text: it holds NUL bytes",
             "few_controls.txt": "control bytes in 340", "docs.jsonl": "cannot be read: 'utf-8' codec",
             "docs.jsonl.gz": "cannot be read: Not a gzipped file", "table.parquet": "cannot be read:",
             "lines.jsonl": "line 2 is not valid JSON"}
  for name, data in junk.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=f"corpus file '{tmp_path / name}'") as e:
      load_documents([str(good), str(tmp_path / name)])
    assert reasons[name] in str(e.value) and "\n" not in str(e.value)
  with caplog.at_level("WARNING", logger="data.corpus"):
    docs = load_documents([str(good), *(str(tmp_path / n) for n in junk)], bad_files="skip")
  assert sorted(d.name for d in docs) == ["a.txt", "latin1.txt"]  # a bad line drops its whole file
  assert "skipped 7 unreadable file(s)" in caplog.text
  with pytest.raises(ValueError, match="bad_files must be one of"):
    load_documents([str(good)], bad_files="ignore")
