"""Reliability: each test turns one reproduction of issue 11 into a check. A workdir has one owner, resume
checks what it resumes, damaged checkpoints fall back, and bad input fails early in one line."""

import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import attention
from attention import dsa
from attention_testing import random_qkv
from data import corpus, pipeline, tokenizer


def _write_corpus(root, n=12):
  (root / "sub").mkdir(parents=True)
  for i in range(n):
    folder = root / "sub" if i % 3 == 0 else root
    (folder / f"doc{i:02d}.txt").write_text(f"document {i} says " + "abc " * (10 + 7 * i))


def test_corpus_split_subset_and_shuffle_do_not_depend_on_where_it_lies(tmp_path):
  _write_corpus(tmp_path / "a")
  shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
  a, b = str(tmp_path / "a"), str(tmp_path / "elsewhere" / "b")
  assert [d.name for d in corpus.load_documents(a)][:2] == ["doc01.txt", "doc02.txt"]
  assert "sub/doc00.txt" in [d.name for d in corpus.load_documents(a)]
  tok = tokenizer.ByteTokenizer()
  for max_documents in (0, 7):
    sa = pipeline.load_splits([a], tok, seq_len=32, val_fraction=0.3, seed=3, max_documents=max_documents)
    sb = pipeline.load_splits([b], tok, seq_len=32, val_fraction=0.3, seed=3, max_documents=max_documents)
    assert (sa.num_train_documents, sa.num_val_documents) == (sb.num_train_documents, sb.num_val_documents)
    for part in ("train", "val"):
      for k in pipeline.ROW_KEYS:
        np.testing.assert_array_equal(getattr(sa, part)[k], getattr(sb, part)[k])
  # A glob's root is its leading directories without wildcards; a single file is named by its base name.
  assert {d.name for d in corpus.load_documents(a + "/*/*.txt")} == {"sub/doc00.txt", "sub/doc03.txt",
                                                                      "sub/doc06.txt", "sub/doc09.txt"}
  assert [d.name for d in corpus.load_documents(a + "/doc01.txt")] == ["doc01.txt"]
  assert corpus.document_name("x/y.jsonl", 4) == "x/y.jsonl#4"
  with pytest.raises(ValueError, match="two files have the document name 'doc01.txt'"):
    corpus.load_documents([a, b])


def test_corpus_of_empty_or_too_short_documents_is_an_error(tmp_path):
  for i in range(4):
    (tmp_path / f"empty{i}.txt").write_text("")
  tok = tokenizer.ByteTokenizer()
  with pytest.raises(ValueError, match=r"training documents hold 0 tokens of text .* fewer than 32"):
    pipeline.load_splits([str(tmp_path)], tok, seq_len=32, val_fraction=0.3, seed=0)
  for i in range(4):
    (tmp_path / f"empty{i}.txt").write_text("short")
  with pytest.raises(ValueError, match=r"training documents hold \d+ tokens of text"):
    pipeline.load_splits([str(tmp_path)], tok, seq_len=64, val_fraction=0.3, seed=0)
  assert pipeline.load_splits([str(tmp_path)], tok, seq_len=8, val_fraction=0.3, seed=0).num_val_documents


def test_attention_batch_zero_window_overflow_and_segment_dtype_fail_in_one_line():
  q, k, v, _ = random_qkv(0, 0, 8, 8, 2, 1, 8)
  for impl in [*attention.REGISTRY, "auto"]:
    with pytest.raises(ValueError, match=r"q: the batch size B must be >= 1, got q \(0, 8, 2, 8\)"):
      attention.attend(q, k, v, impl=impl)
  indices = jnp.zeros((0, 8, 4), jnp.int32)
  for impl in [*dsa.SPARSE_REGISTRY, "auto"]:
    with pytest.raises(ValueError, match="q: the batch size B must be >= 1"):
      attention.sparse_attend(q, k, v, indices, impl=impl)
  for impl in [*dsa.TOPK_REGISTRY, "auto"]:
    with pytest.raises(ValueError, match="q_idx: the batch size B must be >= 1"):
      attention.topk_indices(jnp.zeros((0, 8, 2, 4)), jnp.zeros((0, 8, 4)), jnp.zeros((0, 8, 2)), top_k=2,
                             impl=impl)
  with pytest.raises(ValueError, match=r"Mask.window sides must be <= 2\*\*31 - 1"):
    attention.Mask(window=(2**31, 0))
  q, k, v, _ = random_qkv(1, 2, 8, 8, 2, 1, 8)
  widest = attention.attend(q, k, v, mask=attention.Mask(window=(2**31 - 1, 0)), impl="xla")
  np.testing.assert_allclose(widest, attention.attend(q, k, v, mask=attention.Mask(causal=True),
                                                      impl="reference"), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"segment_ids must be an int array of shape \(2, 8\), got shape "
                                       r"\(2, 8\) dtype float32"):
    attention.attend(q, k, v, segment_ids=jnp.ones((2, 8), jnp.float32))
