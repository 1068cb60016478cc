"""Data: byte tokenizer, corpora on disk, packing with segment ids, passkey retrieval, grain pipeline."""

from data.corpus import BUILTIN, Document, load_documents, split_documents, stdlib_documents
from data.packing import pack
from data.passkey import PasskeyExample, passkey_example, passkey_row
from data.pipeline import PackedSplits, load_splits, train_dataset, train_iterator, val_batches
from data.tokenizer import ByteTokenizer, HFTokenizer, VocabTokenizer, get_tokenizer

__all__ = ["BUILTIN", "ByteTokenizer", "Document", "HFTokenizer", "PackedSplits", "PasskeyExample", "VocabTokenizer",
           "get_tokenizer", "load_documents", "load_splits", "pack", "passkey_example", "passkey_row",
           "split_documents", "stdlib_documents", "train_dataset", "train_iterator", "val_batches"]
