"""Comparison metrics on validation, the written selection rule, and the published files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.tokenizer.compare import ALL_SOURCES, COLUMNS, rare_token_mass, rule_text, select
from tasks.tokenizer.config import TokenizerTrainingConfig
from tasks.tokenizer.stage import COMPARISON_CSV, COMPARISON_JSON, RANK_FREQUENCY_PNG, TOKENIZER_DIR

from tokenizer_corpus import TINY


def _report(built: Path) -> dict:
    return json.loads((built / COMPARISON_JSON).read_text())


def test_metrics_are_sane_overall_and_per_source(built: Path) -> None:
    rows = _report(built)["rows"]
    overall = [row for row in rows if row["source"] == ALL_SOURCES]
    assert [row["candidate"] for row in overall] == [
        f"{kind}-{size}" for kind in TINY.candidates for size in TINY.vocab_sizes
    ]
    for row in overall:
        assert row["bytes_per_token"] > 1 and row["fertility"] > 0
        assert 0 < row["vocab_utilisation"] <= 1 and 0 <= row["rare_token_mass"] <= 1
        assert row["train_seconds"] > 0 and row["encode_mb_per_s"] > 0
        per_source = [r for r in rows if r["candidate"] == row["candidate"] and r["source"] != ALL_SOURCES]
        assert {r["source"] for r in per_source} == {"verse", "prose"}
        for key in ("documents", "bytes", "tokens", "words", "round_trip_failures"):
            assert sum(r[key] for r in per_source) == row[key]
    exact = {row["candidate"]: row["round_trip_exact"] for row in overall}
    assert all(exact[f"{kind}-{size}"] == 1.0 for kind in ("bpe", "unigram") for size in TINY.vocab_sizes)
    # The corpus quotes U+2581, which SentencePiece cannot give back; the metric must show it.
    assert all(exact[f"sentencepiece-{size}"] < 1.0 for size in TINY.vocab_sizes)


def test_a_larger_bpe_vocabulary_packs_more_bytes_per_token(built: Path) -> None:
    overall = {row["candidate"]: row for row in _report(built)["rows"] if row["source"] == ALL_SOURCES}
    assert overall["bpe-768"]["bytes_per_token"] > overall["bpe-512"]["bytes_per_token"]
    assert overall["bpe-768"]["fertility"] < overall["bpe-512"]["fertility"]


def test_the_stage_applies_its_rule_and_publishes_csv_plot_and_hf_tokenizer(built: Path) -> None:
    report = _report(built)
    overall = [row for row in report["rows"] if row["source"] == ALL_SOURCES]
    assert report["chosen"] == select(overall, TINY).chosen
    assert report["rule"] == rule_text(TINY)
    assert not report["chosen"].startswith("sentencepiece")  # excluded: it does not round-trip
    with (built / COMPARISON_CSV).open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == COLUMNS and len(table) == len(report["rows"])
    assert (built / RANK_FREQUENCY_PNG).read_bytes()[:4] == b"\x89PNG"
    assert (built / TOKENIZER_DIR / "tokenizer.json").exists()


def test_rare_token_mass_is_the_share_of_occurrences_on_rare_tokens() -> None:
    counts = np.array([100, 4, 0, 5, 1])
    assert rare_token_mass(counts, k=5) == pytest.approx(5 / 110)
    assert rare_token_mass(counts, k=1) == 0.0
    assert rare_token_mass(np.zeros(3, dtype=int), k=5) == 0.0


def _row(name: str, vocab: int, bpt: float, fertility: float, rare: float, failures: int = 0) -> dict:
    return {"candidate": name, "vocab_size": vocab, "bytes_per_token": bpt, "fertility": fertility,
            "rare_token_mass": rare, "round_trip_failures": failures, "vocab_utilisation": 0.5,
            "encode_mb_per_s": 1.0}


ROWS = [
    _row("bpe-512", 512, 3.0, 1.6, 0.001),
    _row("bpe-1024", 1024, 3.5, 1.4, 0.020),
    _row("unigram-1024", 1024, 3.4, 1.3, 0.010),
    _row("sentencepiece-1024", 1024, 3.9, 1.2, 0.001, failures=3),
]


@pytest.mark.parametrize(
    "fields, chosen",
    [
        ({}, "bpe-1024"),  # best bytes per token; sentencepiece excluded for its round trip
        ({"require_round_trip": False}, "sentencepiece-1024"),
        ({"max_rare_token_mass": 0.015}, "unigram-1024"),
        ({"max_rare_token_mass": 0.005}, "bpe-512"),
        ({"objective": "fertility"}, "unigram-1024"),
        ({"objective": "rare_token_mass"}, "bpe-512"),
    ],
)
def test_changing_the_rule_changes_the_choice(fields: dict, chosen: str) -> None:
    cfg = TokenizerTrainingConfig(**fields)
    selection = select(ROWS, cfg)
    assert selection.chosen == chosen
    assert selection.rule == rule_text(cfg) and chosen in selection.reason


def test_the_rule_and_its_exclusions_read_as_words() -> None:
    selection = select(ROWS, TokenizerTrainingConfig(max_rare_token_mass=0.015))
    assert selection.rule.startswith("maximise bytes_per_token among candidates with round_trip_exact == 1")
    assert "bpe-1024 (rare_token_mass 0.0200 > 0.015)" in selection.reason
    assert "sentencepiece-1024 (3 validation documents do not round-trip)" in selection.reason


def test_ties_go_to_the_smaller_vocabulary() -> None:
    rows = [_row("bpe-1024", 1024, 3.0, 1.5, 0.0), _row("bpe-512", 512, 3.0, 1.5, 0.0)]
    assert select(rows, TokenizerTrainingConfig()).chosen == "bpe-512"


def test_no_admissible_candidate_is_an_actionable_error() -> None:
    with pytest.raises(ValueError, match="no tokenizer candidate satisfies.*max_rare_token_mass"):
        select(ROWS, TokenizerTrainingConfig(max_rare_token_mass=0.0))
