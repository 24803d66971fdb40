"""The 13-gram contamination check: normalised word n-grams, a streamed train index, leaks detected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval_corpus import SMALL
from eval_corpus import append_train_document
from tasks.data.document import Document, iter_split
from tasks.evals.contamination import build_index, overlaps, train_index
from tasks.evals.suite import CONTAMINATED, DROPPED, ITEMS_DIR, SUITE_JSON, build_suite_files

SENTENCE = "now is the winter of our discontent made glorious summer by this sun of york"  # 15 words: three 13-grams


def test_streamed_index_is_the_index_of_the_whole_corpus(curated: Path) -> None:
    texts = [doc.text for doc in iter_split(curated, "train")]
    whole = build_index(texts, 13, batch_docs=len(texts))
    streamed = train_index(curated, 13, batch_docs=7)
    assert streamed.documents == whole.documents == len(texts)
    assert np.array_equal(streamed.hashes, whole.hashes)
    assert np.all(np.diff(streamed.hashes.astype(np.float64)) >= 0) and len(np.unique(streamed.hashes)) == len(streamed)


def test_overlap_counts_normalised_13_grams_only() -> None:
    index = build_index([f"Prologue. {SENTENCE} and more words after it"], 13)
    words = SENTENCE.split()
    shouting = "NOW, is the Winter of our DISCONTENT; made glorious summer by this sun of York!"
    twelve_shared = " ".join(words[:12]) + " elsewhere entirely unrelated words follow"
    assert overlaps(index, [shouting, twelve_shared, " ".join(words[:13])]).tolist() == [3, 0, 1]


def test_an_eval_item_copied_into_the_training_split_is_dropped_and_counted(curated: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    build_suite_files(curated, SMALL, clean, clean)
    assert json.loads((clean / SUITE_JSON).read_text())["tasks"]
    item = json.loads((clean / ITEMS_DIR / "ladder_next_line.jsonl").read_text().splitlines()[0])
    leaked_text = f"{item['context']}\n{item['choices'][item['gold']]}"
    append_train_document(curated, Document("leak/0#0", "verse", f"Some preface.\n{leaked_text}\nAn epilogue."))

    leaky = tmp_path / "leaky"
    output = build_suite_files(curated, SMALL, leaky, leaky)

    kept_ids = [json.loads(line)["id"] for line in (leaky / ITEMS_DIR / "ladder_next_line.jsonl").read_text().splitlines()]
    assert item["id"] not in kept_ids
    dropped = [json.loads(line) for line in (leaky / DROPPED).read_text().splitlines()]
    (found,) = [d for d in dropped if d["task"] == "ladder_next_line" and d["id"] == item["id"]]
    assert found["reason"] == CONTAMINATED and found["train_ngram_hits"] > 0
    counts = output.counts["tasks"]["ladder_next_line"]
    assert counts["dropped"][CONTAMINATED] >= 1
    assert output.metrics["contaminated_items"] == sum(1 for d in dropped if d["reason"] == CONTAMINATED)
