"""Benchmark of the tokenizer stage on the example corpus (about a minute on 2 cores).

Run: ``.venv/bin/python bench/tokenizer.py [--corpus DIR] [--vocab-size N] [--threads N]``.
The corpus is the example corpus (``tasks.data.corpus.fetch_example_corpus()`` or
``--corpus``), cut into documents by the data stage's ``ingest`` and ``normalize``; one
document in ten is held out.
One run prints:

1. Candidate training time, bytes per token and round-trip failures on the held-out documents,
   and encode throughput (MB/s of UTF-8 text) over the whole corpus, as packing encodes it: ours
   (HF ``tokenizers``, byte-level, as the stage trains them) against the ``sentencepiece``
   package trained on the same texts (the stage's training sample, ``max_train_bytes``) with
   the same vocabulary size and the same model type, with byte fallback and identity
   normalisation. Ours is packing's ``TextEncoder`` over chunks of ``chunk_docs`` documents,
   a new one (its cache of word ids empty) for every run, the library's calls on the
   tokenizers thread pool of ``--threads`` threads; SentencePiece encodes all documents in one
   ``encode(texts, num_threads=...)``. Both at 1 thread and at ``--threads``; ratios ours /
   SentencePiece at each. Two rows at one thread say what the cache saves: the library's own
   batch API (``encode_batch_fast``, what packing used before) and its byte-level
   pre-tokenizer alone (the same pipeline with a one-token model), which bounds what any model
   behind the library's pipeline can reach.
2. Packing efficiency (non-padding tokens / all tokens) of the stage's packed shards against
   pad-to-longest batching of the same tokens (one document per row, cut at the sequence
   length, batches of consecutive rows padded to their longest row). Ratio packed / padded.
3. Loader throughput in tokens/s: ``tasks.train.loader.PackedLoader`` batches (inputs,
   labels, position ids, document ids; the attention mask is made later, in the form the
   model's kernel takes, by ``Batch.model_inputs``) against reading the same rows from the
   memory-mapped shards alone. Ratio loader / raw read.

Encode rates are medians of ``ENCODE_REPEATS`` runs, the sides interleaved so that a busy
neighbour slows them alike: per CPU-second at one thread, which the neighbours change least,
and per wall-clock second at each thread count, since threads are what that compares.
Training and loader times are CPU seconds of this process (``time.process_time``), the best of
two runs, with the tokenizers thread pool off, so both sides train on one core. Packing uses
worker processes, so its rate is wall-clock.
"""

from __future__ import annotations

import os

# Before tokenizers is imported: one thread, so CPU time measures the same work on both sides.
# Only the encode comparison turns the thread pool on, around its own calls.
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import io
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models

from timing import best_time  # bench/ is on sys.path when a benchmark runs as a script
from tasks.data.config import InputConfig, NormalizeConfig
from tasks.data.corpus import example_inputs, fetch_example_corpus
from tasks.data.document import Document, iter_split
from tasks.data.ingest import ingest
from tasks.data.normalize import normalize
from tasks.tokenizer.config import TokenizerConfig
from tasks.tokenizer.hf import save_hf
from tasks.tokenizer.encode import TextEncoder
from tasks.tokenizer.pack import pack_split
from tasks.tokenizer.train import load_encoder, sample_rate, train_candidate, training_texts
from tasks.train.loader import PackedLoader
from tasks.train.shards import PackedShards

BATCH_SIZE = 8
LOADER_BATCHES = 200
ENCODE_REPEATS = 3


def write_curated(docs: list[Document], data_dir: Path) -> None:
    """The data stage's layout: nine documents in ten to train, the tenth to validation."""
    splits: dict[str, list[Document]] = {"train": [], "validation": [], "test": []}
    for i, doc in enumerate(docs):
        splits["validation" if i % 10 == 9 else "train"].append(doc)
    for split, members in splits.items():
        directory = data_dir / "curated" / split
        directory.mkdir(parents=True)
        (directory / "part-00000.jsonl").write_text("".join(d.to_json() + "\n" for d in members), encoding="utf-8")


def train_sentencepiece(texts: list[str], vocab_size: int, model_type: str):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, max_sentence_length=1 << 24, num_threads=1, minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def median_seconds(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median ``(wall, CPU)`` seconds of each run, all runs interleaved ``repeat`` times."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            seconds[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
            for name, values in seconds.items()}


def ours_encode(tokenizer: Tokenizer, texts: list[str], threads: int, chunk_docs: int) -> list[np.ndarray]:
    """Packing's encode: a new ``TextEncoder`` over chunks of ``chunk_docs`` texts.

    The library's thread pool sizes itself from RAYON_NUM_THREADS when first used;
    TOKENIZERS_PARALLELISM is read at every call, so it turns the pool on for this call only
    and training stays on one core.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    try:
        encoder = TextEncoder(tokenizer)
        return [ids for start in range(0, len(texts), chunk_docs) for ids in encoder(texts[start : start + chunk_docs])]
    finally:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"


def pre_tokenizer_alone(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer``'s pipeline with a model that maps every pre-token to one id: what is left is our pre-tokenization."""
    floor = Tokenizer(models.WordLevel({"x": 0}, unk_token="x"))
    floor.normalizer = tokenizer.normalizer
    floor.pre_tokenizer = tokenizer.pre_tokenizer
    return floor


def compare_encoding(kind: str, tokenizer: Tokenizer, sp, corpus: list[str], threads: int, chunk_docs: int) -> None:
    """Encode rates of both sides over ``corpus`` at 1 and ``threads`` threads, and what the cache saves.

    The first column is MB per CPU-second at one thread, which a busy machine changes least; the
    others are MB per wall-clock second at each thread count.
    """
    corpus_mb = sum(len(t.encode()) for t in corpus) / 1e6
    counts = sorted({1, threads})
    runs: dict[str, Callable[[], object]] = {}
    for n in counts:
        runs[f"ours {n}"] = lambda n=n: ours_encode(tokenizer, corpus, n, chunk_docs)
        runs[f"sentencepiece {n}"] = lambda n=n: sp.encode(corpus, num_threads=n)
    floor = pre_tokenizer_alone(tokenizer)
    runs["library"] = lambda: tokenizer.encode_batch_fast(corpus)
    runs["pre-tokenizer"] = lambda: floor.encode_batch_fast(corpus)
    medians = median_seconds(runs, ENCODE_REPEATS)
    wall = {name: corpus_mb / w for name, (w, _) in medians.items()}
    cpu = {name: corpus_mb / c for name, (_, c) in medians.items()}
    columns = [f"{n} thread{'s' if n > 1 else ''} wall" for n in counts]
    header = f"{'1 thread CPU':>14}" + "".join(f"{column:>16}" for column in columns)
    print(f"  {'encode MB/s, ' + kind:<44}{header}")
    for label, side in (("ours (TextEncoder, cache empty at start)", "ours"),
                        ("sentencepiece (encode(texts, num_threads))", "sentencepiece")):
        print(f"  {label:<44}{cpu[f'{side} 1']:14.2f}" + "".join(f"{wall[f'{side} {n}']:16.2f}" for n in counts))
    ratios = [cpu["ours 1"] / cpu["sentencepiece 1"]] + [wall[f"ours {n}"] / wall[f"sentencepiece {n}"] for n in counts]
    print(f"  {'ratio ours/sentencepiece':<44}{ratios[0]:13.2f}x" + "".join(f"{r:15.2f}x" for r in ratios[1:]))
    for label, name in (("the library alone (encode_batch_fast)", "library"),
                        ("the library's byte-level pre-tokenizer alone", "pre-tokenizer")):
        print(f"  {label:<44}{cpu[name]:14.2f}{wall[name]:16.2f}")


def compare_training(
    texts: list[str], held_out: list[str], corpus: list[str], vocab_size: int, threads: int, cfg: TokenizerConfig,
    data_dir: Path,
) -> Path:
    """Section 1; returns the directory of our BPE saved in HF format, for sections 2 and 3."""
    held_mb = sum(len(t.encode()) for t in held_out) / 1e6
    print(f"\n1. training on {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB ({len(texts)} documents), "
          f"vocabulary {vocab_size}; tokens and round trips on {held_mb:.2f} MB held out ({len(held_out)} documents); "
          f"encoding the corpus ({sum(len(t.encode()) for t in corpus) / 1e6:.2f} MB, {len(corpus)} documents), "
          f"medians of {ENCODE_REPEATS} interleaved runs")
    bpe_dir = data_dir / "bpe-hf"
    for kind in ("bpe", "unigram"):
        ours_train, tokenizer = best_time(train_candidate, kind, vocab_size, texts, cfg.training(), repeat=1)
        tokenizer.encode_special_tokens = True
        sp_train, sp = best_time(train_sentencepiece, texts, vocab_size, kind, repeat=1)
        print(f"  {'':<26} {'train s':>8} {'bytes/token':>12} {'round-trip fails':>17}")
        for name, train_s, encoded, decode in (
            (f"ours {kind}", ours_train, ours_encode(tokenizer, held_out, 1, cfg.packing.chunk_docs),
             lambda ids: tokenizer.decode(ids.tolist(), skip_special_tokens=False)),
            (f"sentencepiece {kind}", sp_train, sp.encode(held_out), sp.decode),
        ):
            tokens = sum(len(ids) for ids in encoded)
            fails = sum(decode(ids) != text for ids, text in zip(encoded, held_out))
            print(f"  {name:<26} {train_s:8.2f} {held_mb * 1e6 / tokens:12.3f} {fails:17d}")
        print(f"  ratio ours/sentencepiece {kind}: training time {ours_train / sp_train:.2f}x")
        compare_encoding(kind, tokenizer, sp, corpus, threads, cfg.packing.chunk_docs)
        if kind == "bpe":
            save_hf(tokenizer, cfg.training(), bpe_dir)
    return bpe_dir


def pad_to_longest_efficiency(doc_tokens: list[int], seq_len: int, batch_size: int) -> float:
    """Tokens / slots when each document (cut at ``seq_len``) is a row and batches pad to their longest row."""
    rows = [min(seq_len, n - start) for n in doc_tokens for start in range(0, n, seq_len)]
    slots = sum(batch_size * max(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size))
    return sum(rows) / slots


def compare_packing(tokenizer_dir: Path, data_dir: Path, cfg: TokenizerConfig, out: Path) -> PackedShards:
    start = time.perf_counter()
    stats = pack_split(tokenizer_dir, data_dir, "train", out, cfg.packing)
    wall = time.perf_counter() - start
    shards = PackedShards(out)
    padded = pad_to_longest_efficiency([d["num_tokens"] for d in shards.docs], cfg.packing.seq_len, BATCH_SIZE)
    print(f"\n2. packing the train split: {stats.num_documents} documents, {stats.num_tokens} tokens, "
          f"seq_len {cfg.packing.seq_len}, {cfg.packing.num_workers} workers: {stats.num_tokens / wall:,.0f} tokens/s wall")
    print(f"  packed (ours)                 efficiency {stats.efficiency:.4f}")
    print(f"  pad-to-longest, batch {BATCH_SIZE:<3}      efficiency {padded:.4f}")
    print(f"  ratio packed/padded: {stats.efficiency / padded:.2f}x useful tokens per slot")
    return shards


def loader_throughput(shards: PackedShards) -> None:
    loader = PackedLoader(shards, batch_size=BATCH_SIZE, seed=0)
    batches = min(LOADER_BATCHES, loader.batches_per_epoch)
    tokens = batches * BATCH_SIZE * shards.seq_len
    loader_s, _ = best_time(lambda: sum(1 for _ in itertools.islice(iter(loader), batches)))
    order = np.random.default_rng(0).permutation(len(shards))[: batches * BATCH_SIZE].reshape(batches, BATCH_SIZE)
    raw_s, _ = best_time(lambda: [np.asarray(shards.tokens[np.sort(rows)], dtype=np.int64) for rows in order])
    print(f"\n3. loader: {batches} batches of {BATCH_SIZE} x {shards.seq_len}")
    print(f"  PackedLoader (ids, labels, positions, docs)  {tokens / loader_s:14,.0f} tokens/s")
    print(f"  memory-mapped rows alone                     {tokens / raw_s:14,.0f} tokens/s")
    print(f"  ratio loader/raw read: {raw_s / loader_s:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="directory laid out like the example corpus")
    parser.add_argument("--vocab-size", type=int, default=1024, help="vocabulary size of both sides")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="encode threads of each side in the last column (default: the cores)")
    args = parser.parse_args()
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    # Read when the tokenizers thread pool first starts, which is in section 1, after this.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    files = example_inputs(args.corpus or fetch_example_corpus())
    docs = normalize(ingest(files, InputConfig()).records, NormalizeConfig()).documents
    cfg = TokenizerConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_curated(docs, data_dir)
        print(f"corpus: {len(docs)} documents, {sum(len(d.text.encode()) for d in docs) / 1e6:.2f} MB")
        texts = list(training_texts(data_dir, sample_rate(data_dir, cfg.max_train_bytes)))
        held_out = [doc.text for doc in iter_split(data_dir, "validation")]
        corpus = [doc.text for doc in docs]
        tokenizer_dir = compare_training(texts, held_out, corpus, args.vocab_size, args.threads, cfg, data_dir)
        shards = compare_packing(tokenizer_dir, data_dir, cfg, data_dir / "shards")
        loader_throughput(shards)
        assert load_encoder(tokenizer_dir / "tokenizer.json").get_vocab_size() <= args.vocab_size


if __name__ == "__main__":
    main()
