"""Build the data stage's artifact: ingest -> normalize -> quality gate -> dedup -> split and mix -> files.

The per-document steps run shard by shard, in process or on Dask (:mod:`tasks.data.shard`); what must
see the whole corpus runs here over the shards' results: the batch expectations (from every document's
statistics), exact and near dedup (keys and signatures), works and the split (ids, sources and work
signatures), and the writing of the files, which reads each kept document back from its shard.

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
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from ladder.artifacts import Artifact, Code, StageOutput, stage_version
from ladder.workspace import Workspace
from tasks.data.config import DaskConfig, DataConfig
from tasks.data.corpus import InputFile
from tasks.data.dedup import check_unique_ids, join_features, resolve_duplicates
from tasks.data.document import SPLITS, Document, split_dir
from tasks.data.ingest import Quarantined
from tasks.data.quality import QUALITY_DIR, QualityGateError, batch_frame, row_stats, validate_batch
from tasks.data.shard import ShardResult, merge_file_counts, plan_shards, read_line, run_shards, work_signatures
from tasks.data.split import group_works, split_and_mix

STAGE = "data"
# xxhash decides exact and near duplicates, repeated paragraphs and which split a document lands in.
CODE = Code(("tasks.data",), ("great_expectations", "pyarrow", "pandas", "numpy", "xxhash"))
DATA_FILES = ("curated", "quarantine.jsonl", "dataset.json")
GATE_REPORT = "gate.json"  # the counts of a build the quality gate stopped


def write_shards(directory: Path, lines: Iterable[bytes], per_shard: int) -> None:
    """``part-NNNNN.jsonl`` files of ``per_shard`` JSON lines each; an empty split still gets one empty part."""
    directory.mkdir(parents=True, exist_ok=True)
    part = 0
    fh = (directory / f"part-{part:05d}.jsonl").open("wb")
    try:
        for count, line in enumerate(lines):
            if count and count % per_shard == 0:
                fh.close()
                part += 1
                fh = (directory / f"part-{part:05d}.jsonl").open("wb")
            fh.write(line)
    finally:
        fh.close()


def _base_id(doc: Document) -> str:
    """The id of the document a mixture copy was made from (its own id otherwise)."""
    return doc.id.rsplit("@", 1)[0] if "copy" in doc.meta else doc.id


def _counts(total: int, quarantined: list[Quarantined], splits: dict[str, list[Document]],
            words: dict[str, int], chars: dict[str, int]) -> dict[str, Any]:
    reasons = Counter(q.reason for q in quarantined)
    kept = sum(1 for docs in splits.values() for d in docs if "copy" not in d.meta)
    assert total == kept + sum(reasons.values()), "accounting identity broken: a document was lost"
    by_split = {}
    for name, docs in splits.items():
        base = [_base_id(d) for d in docs]
        by_split[name] = {
            "documents": len(docs),
            "unique_documents": len(set(base)),
            "chars": sum(chars[b] for b in base),
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
                 passed: int, failures: list[str], corpus: str) -> QualityGateError:
    """Write the report of a batch the gate stopped into ``out_dir`` (beside ``quality/``); the error to raise."""
    assert total == passed + len(quarantined), "accounting identity broken: a document was lost"
    _write_quarantine(out_dir, quarantined)
    reasons = Counter(q.reason for q in quarantined)
    report = {
        "corpus": corpus,
        "failures": failures,
        "counts": {
            "files": files,
            "documents": {"total": total, "passed_rules": passed, "quarantined": dict(sorted(reasons.items()))},
        },
    }
    (out_dir / GATE_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return QualityGateError(failures, out_dir)


def build_dataset(out_dir: Path, files: list[InputFile], cfg: DataConfig, corpus: str) -> StageOutput:
    """Run every step on ``files`` and write the artifact's files into ``out_dir`` (see the module docstring).

    Per-shard work runs where ``cfg.dask`` says (:func:`tasks.data.shard.run_shards`), writing the shards'
    documents to a scratch directory beside ``out_dir`` that is removed afterwards. Raises
    ``QualityGateError`` when the batch breaks a batch-level expectation, after writing the gate's report
    into ``out_dir``.
    """
    scratch = out_dir.parent / f"{out_dir.name}.shards"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        shards = run_shards(plan_shards(files, cfg.dask.shard_bytes, cfg.input), cfg, scratch)
        return _build_from_shards(out_dir, shards, cfg, corpus)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_from_shards(out_dir: Path, shards: list[ShardResult], cfg: DataConfig, corpus: str) -> StageOutput:
    """The global steps over the shards' results: batch expectations, dedup, works, split, the files."""
    early = {step: [q for s in shards for q in s.quarantined[step]] for step in ("ingest", "normalize", "quality")}
    files = merge_file_counts([s.files for s in shards])
    metrics = {key: sum(s.normalize_metrics[key] for s in shards) for key in shards[0].normalize_metrics}
    _, failures = validate_batch(batch_frame([s.stats for s in shards]), cfg.quality, out_dir / QUALITY_DIR)
    stats = pd.concat([s.stats for s in shards], ignore_index=True)
    total = len(early["ingest"]) + len(early["normalize"]) + len(stats)
    # (shard, index in its kept documents) of every document that passed the rules, in corpus order
    where = [(s, i) for s in shards for i in range(len(s.kept))]
    if failures:
        raise _gate_failed(out_dir, total, files, [q for qs in early.values() for q in qs], len(where), failures, corpus)
    passed = [s.kept[i] for s, i in where]
    check_unique_ids(passed)
    drops = resolve_duplicates(join_features([s.dedup for s in shards]), cfg.dedup)
    work_of = _works(shards, drops, cfg) if cfg.split.group_by == "work" else None
    split = split_and_mix([d for i, d in enumerate(passed) if i not in drops], cfg.split, cfg.mixture, work_of)

    by_id = stats.set_index("id")
    dropped = [Quarantined(passed[i].id, passed[i].source, reason, None if original is None else passed[original].id,
                           stats=row_stats(by_id.loc[passed[i].id]))
               for i, (reason, original, _) in sorted(drops.items())]
    for q in split.quarantined:
        q.stats = row_stats(by_id.loc[q.id])
    quarantined = [*early["ingest"], *early["normalize"], *early["quality"], *dropped, *split.quarantined]

    words = dict(zip(stats["id"], stats["words"].astype(int).tolist()))
    chars = dict(zip(stats["id"], stats["chars"].astype(int).tolist()))
    counts = {
        "files": files,
        "documents": _counts(total, quarantined, split.splits, words, chars),
        "sources": _sources(quarantined, split.splits),
        # Which records split.group_by=work found to be one work, so a reader can check the grouping.
        "groups": {
            "group_by": cfg.split.group_by,
            "total": len(split.groups),
            "merged": {key: members for key, members in split.groups.items() if len(members) > 1},
        },
    }
    location = {passed[n].id: place for n, place in enumerate(where)}
    with ExitStack() as stack:
        handles = {s.index: stack.enter_context(s.docs_path.open("rb")) for s in shards}

        def lines(docs: list[Document]) -> Iterator[bytes]:
            for doc in docs:
                shard, index = location[_base_id(doc)]
                line = read_line(shard, index, handles[shard.index])
                if "copy" in doc.meta:  # a mixture copy: the original's text under the copy's id and meta
                    line = (replace(Document.from_json(line.decode("utf-8")), id=doc.id, meta=doc.meta).to_json()
                            + "\n").encode("utf-8")
                yield line

        for name in SPLITS:
            write_shards(split_dir(out_dir, name), lines(split.splits[name]), cfg.split.shard_documents)
    _write_quarantine(out_dir, quarantined)
    # The location of the input is not part of the dataset's identity; its content (corpus) is. Neither is
    # where the work ran (dask).
    config = cfg.to_dict()
    config["input"].pop("input_dir")
    config.pop("dask")
    dataset = {"corpus": corpus, "config": config, "counts": counts, "normalize": metrics}
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return StageOutput(counts=counts, metrics={**metrics, "quarantine_share": _share(counts)})


def _works(shards: list[ShardResult], drops: dict[int, Any], cfg: DataConfig) -> dict[str, str]:
    """Record id -> work key, from the work signatures of the documents that survived dedup, shard by shard."""
    parts = []
    start = 0
    for s in shards:
        parts.append(work_signatures(s, {i - start for i in drops if start <= i < start + len(s.kept)}))
        start += len(s.kept)
    records = [r for part in parts for r in part.records]
    return group_works(records, lambda c: np.concatenate([part.column(c) for part in parts]), cfg.split.group_threshold)


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
    # Where the shards ran does not change a byte of the dataset, so it is not part of the version: a
    # run on a cluster reuses the artifact built in process, and the other way round.
    identity = cfg.model_copy(update={"dask": DaskConfig()})

    def build(out_dir: Path) -> StageOutput:
        try:
            return build_dataset(out_dir, files, cfg, corpus)
        except QualityGateError as err:
            # run_stage deletes the build directory of a failed build: keep the report where the message says.
            kept = ws.state / "failed" / STAGE / stage_version(STAGE, identity, inputs, CODE)
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(err.report, kept)
            raise QualityGateError(err.failures, kept) from None

    artifact, cached = ws.store().run_stage(STAGE, identity, inputs, build, code=CODE)
    docs = artifact.counts["documents"]
    get_run_logger().info(
        "data artifact %s (%s): %d documents, %d kept, quarantined %s",
        artifact.version, "cached" if cached else "built", docs["total"], docs["kept"], docs["quarantined"],
    )
    return artifact, cached
