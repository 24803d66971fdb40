"""The data stage's per-shard work and where it runs: in this process or on Dask, through Prefect.

A shard is a run of consecutive input files of about ``data.dask.shard_bytes``, or a part of a larger
.jsonl or .parquet file (a run of its lines or row groups, ``ingest.file_parts``). Each shard is read,
normalized, scored by the quality rules and given its dedup features and work signatures on its own,
with memory bounded by the shard: the documents that pass the rules are written to the shard's own
file under a scratch directory, and the driver gets back only what the global steps need (statistics,
quarantine entries, dedup features, documents without their text). Shards are fixed by the files
alone, never by the number of workers, and every record's result depends only on the record, whichever
shard reads it, so any cluster and any shard size give the same dataset, byte for byte. A shard lost with
its worker is computed again by Dask and written again under the same name.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE

from tasks.data.config import DaskConfig, DataConfig, InputConfig
from tasks.data.corpus import InputFile
from tasks.data.dedup import DedupFeatures, dedup_features
from tasks.data.document import Document
from tasks.data.ingest import FilePart, Quarantined, file_parts, ingest, ingest_part
from tasks.data.normalize import normalize
from tasks.data.quality import apply_quality_rules
from tasks.data.split import document_work_signatures, record_id, record_starts


@dataclass(frozen=True)
class Shard:
    """Consecutive input files processed together, or a part of one file; ``index`` orders shards as the files
    and their parts are ordered."""

    index: int
    files: list[InputFile]
    part: FilePart | None = None  # the part of files[0] (its only file) this shard reads; None: whole files


@dataclass
class ShardResult:
    """What the global steps need of one shard; the kept documents' text stays in ``docs_path``."""

    index: int
    files: dict[str, Any]  # ingest's per-file counts
    quarantined: dict[str, list[Quarantined]]  # step (ingest, normalize, quality) -> entries in corpus order
    normalize_metrics: dict[str, int]
    stats: pd.DataFrame  # every document's statistics and rule verdicts (quality.apply_rules)
    kept: list[Document]  # the documents that passed the rules, in order, with empty text
    line_offsets: np.ndarray  # (K + 1,) byte offsets of kept[i]'s JSON line in docs_path
    dedup: DedupFeatures  # of ``kept``
    docs_path: Path
    records: list[str]  # the record of each of ``kept`` (split.group_by=work; empty otherwise)
    work_sigs_path: Path | None  # .npy of (WORK_NUM_PERM, K) work signatures of ``kept`` (split.group_by=work)


def _file_bytes(f: InputFile) -> int:
    """Size on disk for planning; 0 for an entry that will be quarantined without being read."""
    if f.rejected:
        return 0
    try:
        return os.lstat(f.root / (f.target or f.rel)).st_size
    except OSError:
        return 0  # ingest quarantines it as unreadable


def plan_shards(files: list[InputFile], shard_bytes: int, cfg: InputConfig) -> list[Shard]:
    """Files in corpus order cut into shards of at most ``shard_bytes``; never empty. A larger file is cut into
    shards of its lines or row groups where it can be (see ``ingest.file_parts``), and is a shard alone where
    it cannot."""
    planned: list[tuple[list[InputFile], FilePart | None]] = []
    group: list[InputFile] = []
    size = 0
    for f in files:
        n = _file_bytes(f)
        parts = file_parts(f, shard_bytes, cfg) if n > shard_bytes else None
        if group and (parts or size + n > shard_bytes):
            planned.append((group, None))
            group, size = [], 0
        if parts:
            planned.extend(([f], part) for part in parts)
        else:
            group.append(f)
            size += n
    if group or not planned:
        planned.append((group, None))
    return [Shard(i, group, part) for i, (group, part) in enumerate(planned)]


def _write_atomic(path: Path, data: bytes) -> None:
    # A shard recomputed after its worker died rewrites the same name; readers never see half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def process_shard(shard: Shard, cfg: DataConfig, scratch: Path) -> ShardResult:
    """Ingest, normalize, quality rules, dedup features and work signatures of one shard (see the module docstring)."""
    if shard.part is None:
        ingested = ingest(shard.files, cfg.input)
    else:
        ingested = ingest_part(shard.files[0], shard.part, cfg.input)
    normalized = normalize(ingested.records, cfg.normalize)
    del ingested.records  # the raw texts are the documents' again: hold one copy of the shard's text
    stats, kept, failed = apply_quality_rules(normalized.documents, cfg.quality)
    del normalized.documents
    lines = [(d.to_json() + "\n").encode("utf-8") for d in kept]
    offsets = np.concatenate([[0], np.cumsum([len(line) for line in lines], dtype=np.int64)])
    docs_path = scratch / f"shard-{shard.index:05d}.jsonl"
    _write_atomic(docs_path, b"".join(lines))
    del lines
    features = dedup_features(kept, cfg.dedup)
    records: list[str] = []
    sigs_path = None
    if cfg.split.group_by == "work":
        sigs_path = scratch / f"shard-{shard.index:05d}.work.npy"
        # transposed, so that one permutation of every document is one contiguous read (WorkSignatures)
        _write_atomic(sigs_path, _npy_bytes(np.ascontiguousarray(document_work_signatures(kept).T)))
        records = [record_id(d) for d in kept]
    return ShardResult(
        index=shard.index,
        files=ingested.files,
        quarantined={"ingest": ingested.quarantined, "normalize": normalized.quarantined, "quality": failed},
        normalize_metrics=normalized.metrics,
        stats=stats,
        kept=[replace(d, text="") for d in kept],
        line_offsets=offsets,
        dedup=features,
        docs_path=docs_path,
        records=records,
        work_sigs_path=sigs_path,
    )


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass
class WorkSignatures:
    """The work signatures of the records of one shard, from its documents that survived dedup, read from
    disk one permutation at a time, so that a corpus's signatures are never all in memory."""

    path: Path
    survivors: np.ndarray  # indices into the shard's kept documents
    starts: np.ndarray  # where each record's documents start among the survivors
    records: list[str]

    def column(self, c: int) -> np.ndarray:
        """Value c of every record's signature: the minimum over the record's documents."""
        if not len(self.survivors):
            return np.empty(0, dtype=np.uint64)
        return np.minimum.reduceat(np.load(self.path, mmap_mode="r")[c][self.survivors], self.starts)


def work_signatures(result: ShardResult, dropped: set[int]) -> WorkSignatures:
    """The shard's records' work signatures; ``dropped`` holds indices into ``result.kept`` (a record whose
    documents were all dropped has none)."""
    assert result.work_sigs_path is not None, "work signatures are written only for split.group_by=work"
    survivors = [i for i in range(len(result.kept)) if i not in dropped]
    records = [result.records[i] for i in survivors]
    starts = record_starts(records)
    return WorkSignatures(result.work_sigs_path, np.asarray(survivors, dtype=np.int64),
                          np.asarray(starts, dtype=np.int64), [records[i] for i in starts])


def read_line(result: ShardResult, index: int, fh: Any) -> bytes:
    """The JSON line (with its newline) of ``result.kept[index]``, from ``fh`` open on ``result.docs_path``."""
    start, end = int(result.line_offsets[index]), int(result.line_offsets[index + 1])
    fh.seek(start)
    return fh.read(end - start)


@task(name="data-shard", cache_policy=NO_CACHE)  # the stage's artifact is the cache
def shard_task(shard: Shard, cfg: DataConfig, scratch: Path) -> ShardResult:
    """One shard's work as a Prefect task, so that a task runner can place it (see ``run_shards``)."""
    return process_shard(shard, cfg, scratch)


def local_workers(cfg: DaskConfig, shards: int) -> int:
    """Worker processes of the local cluster to start; 0 runs every shard in this process."""
    if cfg.workers is not None:
        return cfg.workers
    workers = min(os.cpu_count() or 1, shards)
    return workers if workers > 1 else 0


@contextmanager
def _environ_kept() -> Iterator[None]:
    """This process's environment as it was before the block.

    A local cluster's nannies write their workers' settings (OMP_NUM_THREADS=1 and the other
    thread counts, a malloc trim threshold) into this process's environment and leave them
    there: every later stage of the run, and the training processes it starts, would then get
    one thread (the pipeline's target trained at 20k instead of 48k tokens/s).
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_shards(shards: list[Shard], cfg: DataConfig, scratch: Path) -> list[ShardResult]:
    """Every shard's result, in shard order: on the cluster at ``data.dask.address``, on a local cluster,
    or in this process (see ``DaskConfig``). Dask runs the shard tasks through Prefect's ``DaskTaskRunner``,
    so each is a Prefect task run, and it recomputes the shards of a worker that dies.

    A stage stopped or failed on the way (SIGTERM, SIGINT, a shard's error) stops the local cluster's
    workers at once: its shards are discarded, and waiting for the running ones would keep it for as long.
    """
    workers = local_workers(cfg.dask, len(shards))
    if cfg.dask.address is None and workers == 0:
        return [process_shard(shard, cfg, scratch) for shard in shards]
    from distributed import LocalCluster
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    if cfg.dask.address is not None:
        # Closing the client on the way out releases its futures: the scheduler drops the pending shards.
        return _gather(DaskTaskRunner(address=cfg.dask.address), shards, cfg, scratch)
    # Workers report their task runs to this process's API; without it each would start a temporary
    # server of its own (seconds each) whose records vanish with it.
    with get_client(sync_client=True) as client:
        env = {"PREFECT_API_URL": str(client.api_url)}
    # Processes, one thread each: tokenizing and hashing hold the GIL.
    with _environ_kept(), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, env=env) as cluster:
        try:
            return _gather(DaskTaskRunner(cluster=cluster), shards, cfg, scratch)
        except BaseException:
            # A worker busy with a shard ignores a polite close: its nanny would wait 4 s before killing it.
            cluster.sync(_stop_workers, list(cluster.workers.values()))
            raise


def _gather(runner: Any, shards: list[Shard], cfg: DataConfig, scratch: Path) -> list[ShardResult]:
    """Every shard's result, in shard order, from the shard tasks run by ``runner`` (a ``DaskTaskRunner``)."""
    with runner:
        futures = list(runner.map(shard_task, {"shard": shards, "cfg": unmapped(cfg), "scratch": unmapped(scratch)}))
        futures.reverse()
        results = []
        while futures:
            # Dropping a future once its result is here lets its worker free the result's copy.
            results.append(futures.pop().result())
        return results


async def _stop_workers(nannies: list[Any]) -> None:
    """Close every worker process, killing within half a second one that does not close (see ``run_shards``)."""
    await asyncio.gather(*(nanny.close(timeout=0.5, reason="data stage stopped") for nanny in nannies))


def merge_file_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Ingest's per-file counts of every shard as those of one corpus."""
    reasons: Counter[str] = Counter()
    for part in parts:
        reasons.update(part["quarantined"])
    return {
        "total": sum(p["total"] for p in parts),
        "read": sum(p["read"] for p in parts),
        "quarantined": dict(sorted(reasons.items())),
    }
