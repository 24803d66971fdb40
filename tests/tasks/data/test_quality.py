import json
from pathlib import Path

import pytest

from tasks.data.config import DataConfig, QualityConfig
from tasks.data.corpus import example_inputs
from tasks.data.document import Document
from tasks.data.ingest import ingest
from tasks.data.normalize import normalize
from tasks.data.quality import DATA_DOCS_INDEX, RESULTS_JSON, apply_rules, batch_frame, document_stats, quality_gate, stats_frame

PROSE = " ".join(["The quick brown fox jumps over the lazy dog near the quiet river bank."] * 10)


def test_statistics_of_a_small_text() -> None:
    text = "- one item here\n- two items there\n#tag #tag ...\nplain words line\nplain words line"
    stats = document_stats(text)
    assert stats["words"] == 17 and stats["lines"] == 5
    assert stats["bullet_line_fraction"] == pytest.approx(2 / 5)
    assert stats["ellipsis_line_fraction"] == pytest.approx(1 / 5)
    assert stats["symbol_word_ratio"] == pytest.approx(3 / 17)  # two hashes, one ellipsis
    assert stats["alpha_word_fraction"] == pytest.approx(14 / 17)  # "-", "-" and "..." have no letter
    assert stats["duplicate_line_char_fraction"] == pytest.approx(16 / (15 + 17 + 13 + 16 + 16))


def test_each_document_gets_the_reason_of_its_first_failed_rule(tmp_path: Path) -> None:
    docs = [
        Document("good", "s", PROSE),
        Document("short", "s", "Too short to keep."),
        Document("numbers", "s", " ".join(str(i) for i in range(100))),
        Document("bullets", "s", "\n".join(f"* item number {i} of the list" for i in range(20))),
    ]
    cfg = QualityConfig(min_kept_documents=1, min_kept_words=1, max_quarantine_share=1)
    result = quality_gate(docs, cfg, tmp_path)
    assert [d.id for d in result.kept] == ["good"]
    assert {q.id: q.reason for q in result.quarantined} == {
        "short": "too_few_words", "numbers": "mean_word_length", "bullets": "bullet_lines",
    }
    numbers = next(q for q in result.quarantined if q.id == "numbers")
    assert "alpha_words" in numbers.detail and numbers.stats["words"] == 100


def test_real_verse_and_stage_directions_pass(example_root: Path, tmp_path: Path) -> None:
    """Short verse lines, speaker names on their own lines, old spelling: the rules must keep them."""
    wanted = {"hamlet_gut.txt", "hamlet_gut_f.txt", "sonnets_gut.txt", "paradiselost.txt", "allegro.txt"}
    files = [f for f in example_inputs(example_root) if Path(f.rel).name in wanted]
    cfg = DataConfig()
    docs = normalize(ingest(files, cfg.input).records, cfg.normalize).documents
    result = quality_gate(docs, cfg.quality, tmp_path)
    reasons = [q.reason for q in result.quarantined]
    # only the two "PARADISE LOST / BOOK n" headings cut off before a long paragraph fall short
    assert len(reasons) <= 3 and set(reasons) <= {"too_few_words"}, reasons


def test_a_batch_breaking_an_expectation_is_reported_naming_it(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", "s", PROSE) for i in range(3)] + [Document("x", "s", "tiny")]
    cfg = QualityConfig(max_quarantine_share=0.1, min_kept_documents=1, min_kept_words=1)
    result = quality_gate(docs, cfg, tmp_path)
    (failure,) = result.failures
    assert "expect_column_sum_to_be_between" in failure and "data.quality.max_quarantine_share" in failure
    assert "observed 0.25" in failure
    assert result.results["success"] is False
    assert (tmp_path / DATA_DOCS_INDEX).exists()  # the report of a failed batch is written too
    assert [q.id for q in result.quarantined] == ["x"]


def test_results_json_and_data_docs_are_written(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", "s", PROSE) for i in range(3)]
    result = quality_gate(docs, QualityConfig(min_kept_documents=3, min_kept_words=300), tmp_path)
    assert result.results["success"] is True and result.failures == []
    saved = json.loads((tmp_path / RESULTS_JSON).read_text())
    types = {r["expectation_config"]["type"] for r in saved["results"]}
    assert types == {"expect_column_sum_to_be_between"}
    assert {r["expectation_config"]["kwargs"]["column"] for r in saved["results"]} == {
        "duplicate_ids", "quarantine_share", "kept", "kept_words"}
    assert "<html" in (tmp_path / DATA_DOCS_INDEX).read_text().lower()


def test_the_batch_rows_are_per_shard_and_see_an_id_repeated_across_shards() -> None:
    cfg = QualityConfig()
    shards = [[Document("a", "s", PROSE), Document("x", "s", "tiny")], [Document("a", "s", PROSE), Document("b", "s", PROSE)]]
    batch = batch_frame([apply_rules(stats_frame(docs), cfg) for docs in shards])
    assert batch["duplicate_ids"].tolist() == [0, 1]
    assert batch["quarantine_share"].sum() == pytest.approx(1 / 4)
    assert batch["kept"].tolist() == [1, 2] and batch["documents"].tolist() == [2, 2]
