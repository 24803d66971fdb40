"""Token shards: documents in order with a boundary after each, padding only at the end, workers change nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ladder.artifacts import hash_files
from tasks.data.document import SPLITS, iter_split
from tasks.tokenizer.config import PackingConfig
from tasks.tokenizer.encode import TextEncoder
from tasks.tokenizer.pack import pack_split, token_ids
from tasks.tokenizer.stage import CANDIDATES_DIR, TOKENIZER_DIR, build_shards
from tasks.tokenizer.train import load_encoder
from tasks.train.shards import PackedShards
from tokenizer_corpus import ODD_TEXTS

SEQ_LEN = 64


@pytest.fixture(scope="module")
def tokenizer_dir(built: Path) -> Path:
    return built / TOKENIZER_DIR


def test_every_document_is_packed_in_order_with_a_boundary_after_it(
    tokenizer_dir: Path, curated: Path, tmp_path: Path
) -> None:
    # Batches of 7 documents: the ids of batch encoding are checked against one encode() per document.
    pack_split(tokenizer_dir, curated, "validation", tmp_path, PackingConfig(seq_len=SEQ_LEN, num_workers=1, chunk_docs=7))
    shards = PackedShards(tmp_path)
    boundary_id, pad_id, _ = token_ids(tokenizer_dir)
    encoder = load_encoder(tokenizer_dir / "tokenizer.json")
    docs = list(iter_split(curated, "validation"))
    tokens, doc_index = np.asarray(shards.tokens).ravel(), np.asarray(shards.doc_index).ravel()
    real = doc_index >= 0
    # Documents follow each other in stored order and each one's tokens are contiguous.
    assert np.all(np.diff(doc_index[real]) >= 0)
    for i, doc in enumerate(docs):
        packed = tokens[doc_index == i].tolist()
        assert packed == encoder.encode(doc.text).ids + [boundary_id]
    assert [record["id"] for record in shards.docs] == [doc.id for doc in docs]
    assert all(record["source"] == doc.source and record["meta"] == doc.meta for record, doc in zip(shards.docs, docs))
    # Padding only at the very end: every row but the last is full.
    assert np.all(shards.doc_index[:-1] >= 0)
    last = np.asarray(shards.doc_index[-1])
    fill = int((last >= 0).sum())
    assert np.all(last[:fill] >= 0) and np.all(last[fill:] == -1)
    assert np.all(np.asarray(shards.tokens[-1])[fill:] == pad_id)


def test_batch_encoding_gives_every_candidate_the_ids_of_one_encode_per_text(built: Path, curated: Path) -> None:
    # Packing encodes in batches through a cache of word ids; the shards must hold the ids encode()
    # gives, for every kind of candidate the stage may choose, on every split and on text that
    # breaks tokenizers. The byte-level ones go through the cache, sentencepiece's cannot.
    texts = [doc.text for split in SPLITS for doc in iter_split(curated, split)] + ODD_TEXTS
    paths = sorted((built / CANDIDATES_DIR).glob("*/tokenizer.json"))
    assert {path.parent.name.split("-")[0] for path in paths} == {"bpe", "unigram", "sentencepiece"}
    for path in paths:
        encoder = load_encoder(path)
        text_encoder = TextEncoder(encoder)
        assert text_encoder.cached == (not path.parent.name.startswith("sentencepiece")), path.parent.name
        # Twice: once learning the words, once from the cache.
        for _ in range(2):
            encoded = [ids.tolist() for ids in text_encoder(texts)]
            assert encoded == [encoder.encode(text).ids for text in texts], path.parent.name


def test_packing_efficiency_on_a_realistic_split(tokenizer_dir: Path, curated: Path, tmp_path: Path) -> None:
    stats = pack_split(tokenizer_dir, curated, "train", tmp_path, PackingConfig(seq_len=256, num_workers=1))
    assert stats.num_tokens > 50_000
    assert stats.efficiency >= 0.99


def test_parallel_tokenization_writes_the_same_shards_as_serial(tokenizer_dir: Path, curated: Path, tmp_path: Path) -> None:
    # Chunks of 7 documents across 2 workers: many chunks, windows and an uneven last chunk.
    serial_cfg = PackingConfig(seq_len=SEQ_LEN, num_workers=1)
    parallel_cfg = PackingConfig(seq_len=SEQ_LEN, num_workers=2, chunk_docs=7)
    serial = build_shards(curated, tokenizer_dir, serial_cfg, tmp_path / "serial")
    parallel = build_shards(curated, tokenizer_dir, parallel_cfg, tmp_path / "parallel")
    assert hash_files(tmp_path / "serial") == hash_files(tmp_path / "parallel")
    assert serial == parallel
    assert set(serial.counts) == {"train", "validation", "test"}
    assert serial.counts["test"]["documents"] == 20
    assert 0.99 <= serial.metrics["packing_efficiency"] <= 1.0
