import json
from collections import Counter
from pathlib import Path

import pytest

from tasks.data.config import DataConfig, InputConfig
from tasks.data.corpus import corpus_version, discover_files
from tasks.data.curate import build_dataset
from tasks.data.document import SPLITS, iter_split
from tasks.data.ingest import ingest


def test_every_bad_file_and_record_is_quarantined_with_its_reason(bad_corpus) -> None:
    files = discover_files(bad_corpus.root)
    result = ingest(files, InputConfig())

    reasons = {q.id: q.reason for q in result.quarantined}
    assert reasons == {**bad_corpus.bad_files, **bad_corpus.bad_records}
    assert sorted(r.id for r in result.records) == sorted(bad_corpus.good_records)
    assert result.files["total"] == len(files)
    assert result.files["read"] + sum(result.files["quarantined"].values()) == len(files)
    assert result.files["quarantined"] == dict(sorted(Counter(bad_corpus.bad_files.values()).items()))
    # messages help the user without leaking where the corpus lies
    for q in result.quarantined:
        assert q.detail and str(bad_corpus.root.parent) not in q.detail


def test_sources_are_top_level_directories(bad_corpus) -> None:
    sources = {f.rel: f.source for f in discover_files(bad_corpus.root)}
    assert sources["good/hamlet.txt"] == "good"
    assert sources["records.jsonl"] == "default"


def test_accounting_identity_holds_through_the_whole_stage(bad_corpus, tmp_path: Path) -> None:
    lenient = {"min_kept_documents": 1, "min_kept_words": 1, "max_quarantine_share": 1}
    cfg = DataConfig.model_validate({"quality": lenient, "dask": {"workers": 0}})  # in process: huge_line.txt alone is a shard
    out = tmp_path / "artifact"
    out.mkdir()
    counts = build_dataset(out, discover_files(bad_corpus.root), cfg, corpus="test").counts

    docs = counts["documents"]
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    curated = [d for split in SPLITS for d in iter_split(out, split)]
    assert docs["total"] == docs["kept"] + sum(docs["quarantined"].values())
    assert docs["kept"] == len(curated) and sum(docs["quarantined"].values()) == len(quarantine)
    assert Counter(q["reason"] for q in quarantine) == docs["quarantined"]
    for reason in {*bad_corpus.bad_files.values(), *bad_corpus.bad_records.values()}:
        assert docs["quarantined"][reason] >= 1
    # the symlink inside the input is read first (a directory's files come before its subdirectories),
    # so every document of the file it points to is an exact duplicate of the symlink's
    copies = [q for q in quarantine if q["id"].startswith("good/hamlet.txt#")]
    assert copies and all(q["reason"] == "exact_duplicate" for q in copies)
    assert all(q["duplicate_of"].startswith("inside_link.txt#") for q in copies)
    assert counts["files"]["total"] == counts["files"]["read"] + sum(counts["files"]["quarantined"].values())


@pytest.mark.timeout(60)  # a FIFO made the corpus hash and ingest wait forever for a writer
def test_hostile_input_never_hangs_or_escapes_and_every_entry_is_accounted_for(hostile_corpus) -> None:
    files = discover_files(hostile_corpus.root)
    version = corpus_version.fn(files)
    result = ingest(files, hostile_corpus.config)

    reasons = {q.id: q.reason for q in result.quarantined}
    assert reasons == {**hostile_corpus.bad_files, **hostile_corpus.bad_records}
    assert sorted(r.id for r in result.records) == sorted(hostile_corpus.good_records)
    assert result.files["total"] == len(files) == result.files["read"] + sum(result.files["quarantined"].values())
    assert result.files["quarantined"] == dict(sorted(Counter(hostile_corpus.bad_files.values()).items()))
    assert "decompressed" in next(q.detail for q in result.quarantined if q.id == "bomb.jsonl.gz")
    assert not any("root:" in r.text for r in result.records)  # /etc/passwd was not read
    for q in result.quarantined:
        assert q.detail and str(hostile_corpus.root.parent) not in q.detail
    assert corpus_version.fn(discover_files(hostile_corpus.root)) == version
