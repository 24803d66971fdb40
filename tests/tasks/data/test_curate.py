"""The whole stage on the full example corpus, with the plain functions (no Prefect, MLflow or DVC)."""

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tasks.data.config import DataConfig
from tasks.data.corpus import example_inputs
from tasks.data.curate import build_dataset
from tasks.data.document import SPLITS, iter_split


@pytest.fixture(scope="module")
def built(example_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("data-artifact")
    files = example_inputs(example_root)
    output = build_dataset(out, files, DataConfig(), corpus="example")
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
