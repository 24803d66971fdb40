"""Tokenize the curated splits in worker processes and pack them into token shards.

Chunks of documents go to a process pool a window at a time, and results come back in
submission order, so the shards are byte-identical whatever the number of workers, and memory
holds one window of chunks however large the split. A chunk is encoded in one call of a
``TextEncoder``, which hands the tokenizers library only the words it has not met before.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from tasks.data.document import Document, iter_split
from tasks.tokenizer.config import PackingConfig
from tasks.tokenizer.encode import TextEncoder
from tasks.tokenizer.shards import PackStats, write_packed
from tasks.tokenizer.train import load_encoder

# Chunks in flight per worker: enough to keep every worker busy while the parent packs.
WINDOW_PER_WORKER = 4

_worker_encoder: TextEncoder | None = None


def _init_worker(tokenizer_file: str, threads: int) -> None:
    # A spawned worker never forks, so its tokenizers thread pool is safe whatever the parent's
    # TOKENIZERS_PARALLELISM (ladder's runtime turns it off for its own process). The pool sizes
    # itself from RAYON_NUM_THREADS when first used, and would otherwise start a thread per core
    # in every worker: the workers share the cores instead, and one thread encodes inline.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    global _worker_encoder
    _worker_encoder = TextEncoder(load_encoder(Path(tokenizer_file)))


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    assert _worker_encoder is not None, "worker used before _init_worker"
    return _worker_encoder(texts)


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while chunk := list(islice(it, size)):
        yield chunk


def doc_record(doc: Document) -> dict[str, Any]:
    """What ``docs.jsonl`` keeps of a document: its id, source and the data stage's statistics."""
    record: dict[str, Any] = {"id": doc.id, "source": doc.source}
    if doc.meta:
        record["meta"] = doc.meta
    return record


def tokenize_documents(
    tokenizer_file: Path, docs: Iterable[Document], num_workers: int, chunk_docs: int
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """``(record, token ids)`` per document, in input order, encoded ``chunk_docs`` at a time.

    ``num_workers == 1`` encodes in this process, on the tokenizers thread pool where this
    process allows it; more uses that many processes, each with its share of the cores.
    """
    if num_workers == 1:
        encoder = TextEncoder(load_encoder(tokenizer_file))
        for chunk in _chunks(docs, chunk_docs):
            for doc, ids in zip(chunk, encoder([doc.text for doc in chunk]), strict=True):
                yield doc_record(doc), ids
        return
    window = num_workers * WINDOW_PER_WORKER
    # spawn, not fork: the parent may hold Prefect's and MLflow's threads and locks. An executor,
    # not a Pool: a worker that cannot start raises BrokenProcessPool here instead of being
    # respawned forever.
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // num_workers)
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_init_worker,
                             initargs=(str(tokenizer_file), threads)) as pool:
        chunks = _chunks(docs, chunk_docs)
        while batch := list(islice(chunks, window)):
            encoded = list(pool.map(_encode_chunk, [[doc.text for doc in chunk] for chunk in batch]))
            for chunk, chunk_ids in zip(batch, encoded, strict=True):
                for doc, ids in zip(chunk, chunk_ids, strict=True):
                    yield doc_record(doc), ids


def token_ids(tokenizer_dir: Path) -> tuple[int, int, int]:
    """``(boundary id, pad id, vocabulary size)`` of a saved HF tokenizer; boundary is its eos."""
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    boundary_id, pad_id = (tokenizer.token_to_id(config[key]) for key in ("eos_token", "pad_token"))
    if boundary_id is None or pad_id is None:
        raise ValueError(f"the tokenizer at {tokenizer_dir} lacks its eos or pad token: rerun `ladder tokenizer`")
    return boundary_id, pad_id, tokenizer.get_vocab_size()


def pack_split(tokenizer_dir: Path, data_dir: Path, split: str, out_dir: Path, packing: PackingConfig) -> PackStats:
    """Tokenize one curated split with the HF tokenizer in ``tokenizer_dir`` and pack it into ``out_dir``."""
    boundary_id, pad_id, vocab_size = token_ids(tokenizer_dir)
    docs = iter_split(data_dir, split)
    pairs = tokenize_documents(tokenizer_dir / "tokenizer.json", docs, packing.num_workers, packing.chunk_docs)
    return write_packed(out_dir, pairs, packing.seq_len, pad_id, boundary_id, vocab_size)
