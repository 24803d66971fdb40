"""Build the data stage's artifact: ingest -> normalize -> quality gate -> dedup -> split and mix -> files.

The artifact (``ArtifactStore`` stage ``data``) holds exactly what ``data/`` will hold:

- ``curated/<split>/part-NNNNN.jsonl``: one ``Document`` per line, ``split.shard_documents`` per part;
- ``quarantine.jsonl``: every document left out (id, source, reason, duplicate_of, detail, stats), in
  pipeline order: ingest, normalize, quality, dedup, mixture;
- ``dataset.json``: config, corpus version, counts by reason, per-split and per-source statistics, and
  the groups (works) the split kept together;

plus ``quality/`` (Great Expectations results JSON and Data Docs), which stays in the artifact store.
None of the data files holds a timestamp or an absolute path, so building twice gives the same bytes.

A batch that breaks a quality expectation builds no artifact. Its report (``quality/``, the
``quarantine.jsonl`` of the documents left out so far and ``gate.json`` with the counts by reason and
the broken expectations) is kept in ``.ladder/failed/data/<version>/``, which the error names.

Accounting: a quarantined file or record counts as one document, so
``documents.total == documents.kept + sum(documents.quarantined.values())`` always.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ladder.artifacts import Artifact, Code, StageOutput, stage_version
from ladder.workspace import Workspace
from tasks.data.config import DataConfig
from tasks.data.corpus import InputFile
from tasks.data.dedup import deduplicate
from tasks.data.document import SPLITS, Document, split_dir
from tasks.data.ingest import Quarantined, ingest
from tasks.data.normalize import normalize
from tasks.data.quality import QUALITY_DIR, QualityGateError, QualityResult, quality_gate, row_stats
from tasks.data.split import split_and_mix

STAGE = "data"
# xxhash decides exact and near duplicates, repeated paragraphs and which split a document lands in.
CODE = Code(("tasks.data",), ("great_expectations", "pyarrow", "pandas", "numpy", "xxhash"))
DATA_FILES = ("curated", "quarantine.jsonl", "dataset.json")
GATE_REPORT = "gate.json"  # the counts of a build the quality gate stopped


def write_shards(directory: Path, docs: list[Document], per_shard: int) -> None:
    """``part-NNNNN.jsonl`` files of ``per_shard`` documents; an empty split still gets one empty part."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, max(len(docs), 1), per_shard)):
        lines = "".join(d.to_json() + "\n" for d in docs[start : start + per_shard])
        (directory / f"part-{index:05d}.jsonl").write_text(lines, encoding="utf-8")


def _base_id(doc: Document) -> str:
    """The id of the document a mixture copy was made from (its own id otherwise)."""
    return doc.id.rsplit("@", 1)[0] if "copy" in doc.meta else doc.id


def _counts(total: int, quarantined: list[Quarantined], splits: dict[str, list[Document]],
            words: dict[str, int]) -> dict[str, Any]:
    reasons = Counter(q.reason for q in quarantined)
    kept = sum(1 for docs in splits.values() for d in docs if "copy" not in d.meta)
    assert total == kept + sum(reasons.values()), "accounting identity broken: a document was lost"
    by_split = {}
    for name, docs in splits.items():
        base = [_base_id(d) for d in docs]
        by_split[name] = {
            "documents": len(docs),
            "unique_documents": len(set(base)),
            "chars": sum(len(d.text) for d in docs),
            "words": sum(words[b] for b in base),
        }
    return {
        "total": total,
        "kept": kept,
        "quarantined": dict(sorted(reasons.items())),
        "splits": by_split,
    }


def _sources(quarantined: list[Quarantined], splits: dict[str, list[Document]]) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for q in quarantined:
        entry = sources.setdefault(q.source, {"kept": 0, "quarantined": Counter(), "splits": Counter()})
        entry["quarantined"][q.reason] += 1
    for name, docs in splits.items():
        for d in docs:
            entry = sources.setdefault(d.source, {"kept": 0, "quarantined": Counter(), "splits": Counter()})
            entry["splits"][name] += 1
            entry["kept"] += "copy" not in d.meta
    return {
        s: {
            "kept": e["kept"],
            "quarantined": dict(sorted(e["quarantined"].items())),
            "split_documents": dict(e["splits"]),
        }
        for s, e in sorted(sources.items())
    }


def _write_quarantine(out_dir: Path, quarantined: list[Quarantined]) -> None:
    with (out_dir / "quarantine.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(q.to_json() + "\n" for q in quarantined)


def _gate_failed(out_dir: Path, total: int, files: dict[str, Any], quarantined: list[Quarantined],
                 gate: QualityResult, corpus: str) -> QualityGateError:
    """Write the report of a batch the gate stopped into ``out_dir`` (beside ``quality/``); the error to raise."""
    assert total == len(gate.kept) + len(quarantined), "accounting identity broken: a document was lost"
    _write_quarantine(out_dir, quarantined)
    reasons = Counter(q.reason for q in quarantined)
    report = {
        "corpus": corpus,
        "failures": gate.failures,
        "counts": {
            "files": files,
            "documents": {"total": total, "passed_rules": len(gate.kept), "quarantined": dict(sorted(reasons.items()))},
        },
    }
    (out_dir / GATE_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return QualityGateError(gate.failures, out_dir)


def build_dataset(out_dir: Path, files: list[InputFile], cfg: DataConfig, corpus: str) -> StageOutput:
    """Run every step on ``files`` and write the artifact's files into ``out_dir`` (see the module docstring).

    Raises ``QualityGateError`` when the batch breaks a batch-level expectation, after writing the
    gate's report into ``out_dir``.
    """
    ingested = ingest(files, cfg.input)
    normalized = normalize(ingested.records, cfg.normalize)
    total = len(ingested.quarantined) + len(normalized.quarantined) + len(normalized.documents)
    gate = quality_gate(normalized.documents, cfg.quality, out_dir / QUALITY_DIR)
    if gate.failures:
        so_far = [*ingested.quarantined, *normalized.quarantined, *gate.quarantined]
        raise _gate_failed(out_dir, total, ingested.files, so_far, gate, corpus)
    deduped = deduplicate(gate.kept, cfg.dedup)
    split = split_and_mix(deduped.kept, cfg.split, cfg.mixture)

    stats = {row["id"]: row for row in gate.stats.to_dict("records")}
    dropped = [Quarantined(d.doc.id, d.doc.source, d.reason, d.duplicate_of, stats=row_stats(stats[d.doc.id]))
               for d in deduped.dropped]
    for q in split.quarantined:
        q.stats = row_stats(stats[q.id])
    quarantined = [*ingested.quarantined, *normalized.quarantined, *gate.quarantined, *dropped, *split.quarantined]

    words = {row_id: int(row["words"]) for row_id, row in stats.items()}
    counts = {
        "files": ingested.files,
        "documents": _counts(total, quarantined, split.splits, words),
        "sources": _sources(quarantined, split.splits),
        # Which records split.group_by=work found to be one work, so a reader can check the grouping.
        "groups": {
            "group_by": cfg.split.group_by,
            "total": len(split.groups),
            "merged": {key: members for key, members in split.groups.items() if len(members) > 1},
        },
    }
    for name in SPLITS:
        write_shards(split_dir(out_dir, name), split.splits[name], cfg.split.shard_documents)
    _write_quarantine(out_dir, quarantined)
    # The location of the input is not part of the dataset's identity; its content (corpus) is.
    config = cfg.to_dict()
    config["input"].pop("input_dir")
    dataset = {"corpus": corpus, "config": config, "counts": counts, "normalize": normalized.metrics}
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return StageOutput(counts=counts, metrics={**normalized.metrics, "quarantine_share": _share(counts)})


def _share(counts: dict[str, Any]) -> float:
    docs = counts["documents"]
    return round(1 - docs["kept"] / docs["total"], 6) if docs["total"] else 0.0


@task(name="data-curate", cache_policy=NO_CACHE)  # the artifact store is the cache
def curate(ws: Workspace, cfg: DataConfig, files: list[InputFile], corpus: str) -> tuple[Artifact, bool]:
    """The data artifact for (corpus, config): built once, then a cache hit that does no work.

    A batch the quality gate stops raises ``QualityGateError`` naming ``.ladder/failed/data/<version>/``,
    where the report of the failed build is kept.
    """
    inputs = {"corpus": corpus}

    def build(out_dir: Path) -> StageOutput:
        try:
            return build_dataset(out_dir, files, cfg, corpus)
        except QualityGateError as err:
            # run_stage deletes the build directory of a failed build: keep the report where the message says.
            kept = ws.state / "failed" / STAGE / stage_version(STAGE, cfg, inputs, CODE)
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(err.report, kept)
            raise QualityGateError(err.failures, kept) from None

    artifact, cached = ws.store().run_stage(STAGE, cfg, inputs, build, code=CODE)
    docs = artifact.counts["documents"]
    get_run_logger().info(
        "data artifact %s (%s): %d documents, %d kept, quarantined %s",
        artifact.version, "cached" if cached else "built", docs["total"], docs["kept"], docs["quarantined"],
    )
    return artifact, cached
