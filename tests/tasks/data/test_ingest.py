import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data import ingest as ingest_module
from tasks.data.config import DataConfig, InputConfig
from tasks.data.corpus import InputFile, corpus_version, discover_files
from tasks.data.curate import build_dataset
from tasks.data.document import SPLITS, iter_split
from tasks.data.ingest import IngestResult, file_parts, ingest, ingest_part
from tasks.data.shard import merge_file_counts


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


def _read_in_parts(f: InputFile, max_bytes: int, cfg: InputConfig) -> list[IngestResult]:
    parts = file_parts(f, max_bytes, cfg)
    assert parts is not None and len(parts) >= 4
    return [ingest_part(f, part, cfg) for part in parts]


def test_a_jsonl_file_read_in_line_ranges_gives_what_reading_it_whole_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # blocks smaller than a line, so that cuts and line counts straddle the scan's blocks
    monkeypatch.setattr(ingest_module, "_SCAN_BLOCK", 7)
    texts = [json.dumps({"text": f"record {i} " + "verse " * (i % 13)}) for i in range(40)]
    texts[17] = '{"text": "a broken line in the middle of a range'
    texts[25] = ""  # a blank separator line holds no record
    root = tmp_path / "lines"
    root.mkdir()
    (root / "big.jsonl").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (f,) = discover_files(root)

    parts = _read_in_parts(f, 200, InputConfig())
    whole = ingest([f], InputConfig())
    assert [r for p in parts for r in p.records] == whole.records
    assert [q for p in parts for q in p.quarantined] == whole.quarantined
    assert [q.id for q in whole.quarantined] == ["big.jsonl:18"]  # counted once, under its own line number
    assert merge_file_counts([p.files for p in parts]) == whole.files


def test_a_parquet_file_read_in_runs_of_row_groups_gives_what_reading_it_whole_gives(tmp_path: Path) -> None:
    texts: list[str | None] = [f"record {i} " + "verse " * (i % 13) for i in range(40)]
    texts[17] = None  # a row without text in the middle of a run
    root = tmp_path / "rows"
    root.mkdir()
    pq.write_table(pa.table({"text": texts}), root / "big.parquet", row_group_size=3)
    (f,) = discover_files(root)

    parts = _read_in_parts(f, 400, InputConfig())
    whole = ingest([f], InputConfig())
    assert [r for p in parts for r in p.records] == whole.records
    assert [q for p in parts for q in p.quarantined] == whole.quarantined
    assert [q.id for q in whole.quarantined] == ["big.parquet:17"]
    assert merge_file_counts([p.files for p in parts]) == whole.files


def test_files_with_a_verdict_on_the_whole_file_are_never_cut(bad_corpus) -> None:
    # a gzip stream cannot be entered in the middle; a NUL byte anywhere makes the whole file binary
    root = bad_corpus.root
    (root / "nul.jsonl").write_bytes(b'{"text": "a"}\n' * 50 + b"\0\n" + b'{"text": "b"}\n' * 50)
    (root / "blank.jsonl").write_bytes(b" \n" * 500)
    (root / "big.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000, mtime=0))
    pq.write_table(pa.table({"body": ["x" * 100] * 50}), root / "no_text.parquet", row_group_size=5)
    pq.write_table(pa.table({"text": ["x" * 100] * 50}), root / "large.parquet", row_group_size=5)
    files = {f.rel: f for f in discover_files(root)}
    for name in ("nul.jsonl", "blank.jsonl", "big.jsonl.gz", "records.jsonl.gz", "table.parquet", "no_text.parquet"):
        assert file_parts(files[name], 20, InputConfig()) is None, name
    assert file_parts(files["large.parquet"], 20, InputConfig()) is not None
    for name in ("records.jsonl", "large.parquet"):  # file_too_large: on disk, or its text column decompressed
        assert file_parts(files[name], 20, InputConfig(max_file_bytes=4000)) is None, name
