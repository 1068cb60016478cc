"""Tests for data/: tokenizers, corpora, packing, passkey retrieval and the grain pipeline."""

import json
import re

import numpy as np
import pytest

from data import corpus, packing, passkey, pipeline, tokenizer


def test_byte_tokenizer_round_trip_and_specials():
  tok = tokenizer.ByteTokenizer()
  text = "def f(x):\n  return x ** 2  # über ∑ 🙂"
  ids = tok.encode(text, bos=True, eos=True)
  assert ids.dtype == np.int32 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert len(ids) == len(text.encode("utf-8")) + 2
  assert tok.decode(ids) == text
  specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.sep_id, tok.unk_id}
  assert len(specials) == 6 and min(specials) == 256 and max(specials) < tok.vocab_size


def test_vocab_tokenizer_longest_match(tmp_path):
  path = tmp_path / "vocab.json"
  path.write_text(json.dumps({"tokens": ["def", "def ", "return", "self", "se"]}))
  tok = tokenizer.get_tokenizer(str(path))
  first = 256 + len(tokenizer.SPECIAL_TOKENS)
  ids = tok.encode("def self: return sex")
  # "def " beats "def"; "self" beats "se"; unknown bytes fall back to themselves.
  assert list(ids[:2]) == [first + 1, first + 3]
  assert first + 2 in ids and first + 4 in ids
  assert tok.vocab_size == first + 5
  assert tok.decode(ids) == "def self: return sex"
  assert len(ids) < len("def self: return sex")


def test_vocab_tokenizer_errors(tmp_path):
  with pytest.raises(ValueError, match="tokenizer_path="):
    tokenizer.get_tokenizer(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"words": ["a"]}))
  with pytest.raises(ValueError, match="tokens"):
    tokenizer.get_tokenizer(str(bad))


def test_builtin_corpus_is_real_and_long():
  docs = corpus.load_documents(corpus.BUILTIN)
  assert len(docs) > 100
  assert any(d.name.endswith("os.py") for d in docs)
  lengths = sorted(len(d.text) for d in docs)
  assert lengths[len(lengths) // 2] > 2_000 and lengths[-1] > 100_000
  assert not any("site-packages" in d.name for d in docs)


def test_corpus_files_globs_and_missing_path(tmp_path):
  for i in range(3):
    (tmp_path / f"d{i}.txt").write_text(f"document {i} " * 10)
  docs = corpus.load_documents([str(tmp_path / "*.txt")])
  assert [d.text.split()[1] for d in docs] == ["0", "1", "2"]
  assert len(corpus.load_documents(str(tmp_path))) == 3
  with pytest.raises(ValueError, match="does not exist: .*nope.txt"):
    corpus.load_documents([str(tmp_path / "nope.txt")])
  with pytest.raises(ValueError, match="matches no files"):
    corpus.load_documents([str(tmp_path / "*.md")])


def test_max_documents_is_a_stable_subset():
  a = corpus.load_documents(corpus.BUILTIN, max_documents=30)
  b = corpus.load_documents(corpus.BUILTIN, max_documents=30)
  assert len(a) == 30 and [d.name for d in a] == [d.name for d in b] == sorted(d.name for d in a)
  assert len({d.name.split("/")[0] for d in a}) > 3  # spread over the library, not its first folder


def test_split_is_deterministic_and_disjoint():
  docs = [corpus.Document(f"doc{i}", "x") for i in range(400)]
  train, val = corpus.split_documents(docs, 0.1)
  train2, val2 = corpus.split_documents(list(reversed(docs)), 0.1)
  assert {d.name for d in val} == {d.name for d in val2}
  assert not {d.name for d in train} & {d.name for d in val}
  assert len(train) + len(val) == 400 and 20 < len(val) < 60
  with pytest.raises(ValueError, match="val_fraction"):
    corpus.split_documents(docs, 1.5)
  few_train, few_val = corpus.split_documents(docs[:3], 0.01)  # hashes alone would hold out nothing
  assert len(few_val) == 1 and len(few_train) == 2


def test_pack_segments_and_positions():
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 256, size=n).astype(np.int32) for n in (5, 17, 3, 30, 1)]
  rows = packing.pack(docs, 8, pad_id=256)
  tok, seg, pos = rows["tokens"], rows["segment_ids"], rows["positions"]
  assert tok.shape == (7, 8) and seg.shape == pos.shape == tok.shape
  # Reading the pieces back in order gives the documents; positions restart at every piece.
  flat_tok, flat_seg, flat_pos = tok.reshape(-1), seg.reshape(-1), pos.reshape(-1)
  n = sum(d.size for d in docs)
  np.testing.assert_array_equal(flat_tok[:n], np.concatenate(docs))
  assert (flat_seg[n:] == 0).all() and (flat_tok[n:] == 256).all()
  for r in range(tok.shape[0]):
    for s in set(seg[r]) - {0}:
      np.testing.assert_array_equal(pos[r][seg[r] == s], np.arange((seg[r] == s).sum()))
  # Row 0: doc 0 (5 tokens), then the start of doc 1.
  np.testing.assert_array_equal(seg[0], [1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(pos[0], [0, 1, 2, 3, 4, 0, 1, 2])
  with pytest.raises(ValueError, match="seq_len"):
    packing.pack(docs, 1, pad_id=0)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_passkey_key_sits_at_depth(depth):
  tok = tokenizer.ByteTokenizer()
  ex = passkey.passkey_example(tok, 2000, depth, seed=7)
  assert ex.tokens.shape == (2000,) and re.fullmatch(r"\d{5}", ex.key)
  text = tok.decode(ex.tokens)
  needle = tok.decode(ex.tokens[ex.needle_start:ex.needle_start + ex.needle_len])
  assert needle.startswith(f"The pass key is {ex.key}.")
  assert text.count(ex.key) == 3  # twice in the needle, once as the answer
  assert abs(ex.depth - depth) <= len(passkey.FILLER) / 5 / (ex.haystack_len - ex.needle_len) + 1e-9
  assert tok.decode(ex.tokens[ex.answer_start:ex.answer_start + ex.answer_len]) == " " + ex.key
  assert tok.decode(ex.tokens[:ex.answer_start]).endswith("What is the pass key? The pass key is")


def test_passkey_deterministic_per_seed():
  tok = tokenizer.ByteTokenizer()
  a = passkey.passkey_example(tok, 500, 0.5, seed=1)
  b = passkey.passkey_example(tok, 500, 0.5, seed=1)
  keys = {passkey.passkey_example(tok, 500, 0.5, seed=s).key for s in range(10)}
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert len(keys) > 5
  with pytest.raises(ValueError, match="length=50"):
    passkey.passkey_example(tok, 50, 0.5, seed=0)


def _rows(n=40, t=16):
  docs = [np.full(7 + i % 5, i, np.int32) for i in range(n)]
  return packing.pack(docs, t, pad_id=256)


def test_pipeline_is_deterministic_and_resumes_exactly():
  tok = tokenizer.ByteTokenizer()
  rows = _rows()
  ds = pipeline.train_dataset(rows, tok, batch_size=3, seed=5, passkey_rate=0.0)
  it = pipeline.train_iterator(ds)
  first = [next(it) for _ in range(4)]
  state = it.get_state()
  rest = [next(it) for _ in range(3)]
  it2 = pipeline.train_iterator(pipeline.train_dataset(rows, tok, batch_size=3, seed=5))
  it2.set_state(state)
  for a, b in zip(rest, [next(it2) for _ in range(3)]):
    for k in pipeline.ROW_KEYS:
      np.testing.assert_array_equal(a[k], b[k])
  assert first[0]["tokens"].shape == (3, 16) and first[0]["tokens"].dtype == np.int32
  other = next(pipeline.train_iterator(pipeline.train_dataset(rows, tok, batch_size=3, seed=6)))
  assert not np.array_equal(other["tokens"], first[0]["tokens"])


def test_pipeline_epochs_are_reshuffled_and_cover_every_row():
  tok = tokenizer.ByteTokenizer()
  rows = _rows()
  n = len(rows["tokens"])
  ds = pipeline.train_dataset(rows, tok, batch_size=1, seed=0)
  epoch0 = [ds[i]["tokens"][0] for i in range(n)]
  epoch1 = [ds[n + i]["tokens"][0] for i in range(n)]
  as_set = lambda e: sorted(map(bytes, e))
  assert as_set(epoch0) == as_set(epoch1) == as_set(list(rows["tokens"]))
  assert [bytes(x) for x in epoch0] != [bytes(x) for x in epoch1]


def test_pipeline_passkey_mix_rate_and_sharding():
  tok = tokenizer.ByteTokenizer()
  rows = _rows(t=400)
  ds = pipeline.train_dataset(rows, tok, batch_size=1, seed=0, passkey_rate=0.3)
  is_passkey = [b"pass key" in bytes(ds[i]["tokens"][0].astype(np.uint8)) for i in range(200)]
  assert 0.2 < np.mean(is_passkey) < 0.4
  a = pipeline.train_dataset(rows, tok, batch_size=2, seed=0, shard_index=0, shard_count=2)
  b = pipeline.train_dataset(rows, tok, batch_size=2, seed=0, shard_index=1, shard_count=2)
  whole = pipeline.train_dataset(rows, tok, batch_size=1, seed=0)
  np.testing.assert_array_equal(a[0]["tokens"][1], whole[2]["tokens"][0])
  np.testing.assert_array_equal(b[0]["tokens"][0], whole[1]["tokens"][0])


def test_position_stride_jitters_positions_within_each_piece_only():
  tok = tokenizer.ByteTokenizer()
  rows = _rows(t=64)
  plain = pipeline.train_dataset(rows, tok, batch_size=4, seed=0, mqar_rate=0.5, episode_min_len=16)
  jit = pipeline.train_dataset(rows, tok, batch_size=4, seed=0, mqar_rate=0.5, episode_min_len=16,
                               position_stride=3)
  strides = []
  for i in range(8):
    a, b = plain[i], jit[i]
    for k in ("tokens", "segment_ids"):
      np.testing.assert_array_equal(a[k], b[k])  # only the positions change
    np.testing.assert_array_equal(b["positions"] == 0, a["positions"] == 0)  # every piece still starts at 0
    step = np.diff(b["positions"], axis=1)[a["positions"][:, 1:] > 0]  # within pieces
    strides.append(step)
  strides = np.concatenate(strides)
  assert set(np.unique(strides)) == {1, 2, 3}  # strictly increasing, every stride drawn
  again = pipeline.train_dataset(rows, tok, batch_size=4, seed=0, mqar_rate=0.5, episode_min_len=16,
                                 position_stride=3)
  np.testing.assert_array_equal(again[3]["positions"], jit[3]["positions"])  # deterministic per row
  with pytest.raises(ValueError, match="position_stride"):
    pipeline.train_dataset(rows, tok, batch_size=4, seed=0, position_stride=0)


def test_log_distance_depths_put_needles_near_the_question_at_every_length():
  rng = np.random.default_rng(0)
  for n in (128, 8192):
    uniform = 1 - np.array([pipeline.draw_depth(rng, n, "uniform") for _ in range(4000)])
    log = 1 - np.array([pipeline.draw_depth(rng, n, "log_distance") for _ in range(4000)])
    assert 0 <= log.min() and log.max() <= 1
    # Half uniform, half log-uniform distance: every doubling of the distance holds ~1 / (2 log2 n) + uniform's.
    near = np.mean(log * n < 16)
    assert abs(near - (0.5 * 4 / np.log2(n) + 0.5 * 16 / n)) < 0.03, (n, near)
    assert np.mean(uniform * n < 16) < 16 / n + 0.02 and abs(np.mean(log > 0.5) - 0.25 - 0.5 / np.log2(n)) < 0.03
  # Through the dataset: the needle's distance from the question, in whole-row passkey prompts of 1024 tokens.
  tok, rows = tokenizer.ByteTokenizer(), _rows(t=1024)
  def distances(kind):
    ds = pipeline.train_dataset(rows, tok, batch_size=1, seed=0, passkey_rate=1.0, passkey_prompt="compact",
                                passkey_depth=kind)
    text = [bytes(ds[i]["tokens"][0].astype(np.uint8)).decode("latin-1") for i in range(60)]
    return np.array([t.rfind("\nThe pass key is") - t.find("The pass key is") for t in text])
  assert np.mean(distances("uniform") < 100) < 0.15 and np.mean(distances("log_distance") < 100) > 0.3
  with pytest.raises(ValueError, match="passkey_depth"):
    pipeline.train_dataset(rows, tok, batch_size=1, seed=0, passkey_depth="near")


def test_load_splits_and_val_batches(tmp_path):
  for i in range(30):
    (tmp_path / f"f{i:02d}.txt").write_text(f"text of file {i}\n" * (i + 1))
  tok = tokenizer.ByteTokenizer()
  s = pipeline.load_splits([str(tmp_path)], tok, seq_len=64, val_fraction=0.2, seed=0)
  assert s.num_train_documents + s.num_val_documents == 30 and s.num_val_documents > 0
  train_text = tok.decode(s.train["tokens"])
  val_text = tok.decode(s.val["tokens"])
  for i in range(30):
    assert (f"text of file {i}\n" in train_text) != (f"text of file {i}\n" in val_text)
  batches = pipeline.val_batches(s.val, batch_size=4, num_batches=100)
  assert len(batches) == -(-len(s.val["tokens"]) // 4)
  assert all(b["tokens"].shape == (4, 64) for b in batches)
