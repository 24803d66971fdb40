"""Version the curated dataset with DVC, record it in MLflow and summarize it in Prefect.

``data/`` in the workspace is a copy of the data artifact's data files, tracked by DVC through
``data.dvc``; its DVC md5 (``outs[0].md5``, ending in ``.dir``) is the dataset version. The mapping
artifact version -> md5 is kept in ``<artifacts>/data/dvc-md5.json`` so that an unchanged rerun
neither copies nor re-adds anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Artifact, ArtifactRef
from ladder.tags import DATASET, DATA_CACHED
from ladder.tracking import flatten, stage_run
from ladder.workspace import Workspace
from tasks.data.config import DataConfig
from tasks.data.curate import DATA_FILES, STAGE
from tasks.data.document import SPLITS, iter_split
from tasks.data.quality import DATA_DOCS_INDEX, QUALITY_DIR, RESULTS_JSON

STAMPS = "dvc-md5.json"


def run_dvc(cwd: Path, *args: str) -> str:
    """Run the venv's ``dvc`` in ``cwd`` (a DVC project's root); a failure raises with DVC's own message."""
    cmd = [str(Path(sys.executable).parent / "dvc"), *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {cwd}: {message}")
    return done.stdout


def dvc_md5(ws: Workspace) -> str | None:
    """The md5 recorded in ``data.dvc``, or None when there is none yet."""
    if not ws.data_dvc.exists():
        return None
    outs = (yaml.safe_load(ws.data_dvc.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def dataset_version(ws: Workspace) -> str:
    """The curated dataset's version: the DVC md5 recorded in the workspace's ``data.dvc``."""
    md5 = dvc_md5(ws)
    if not md5:
        raise ValueError(
            f"no dataset version in {ws.data_dvc}: run `ladder data` first (or `dvc add data`), or pass the dataset md5"
        )
    return md5


def dvc_remote(ws: Workspace) -> str:
    """URL of the workspace's default DVC remote (local paths resolved as DVC resolves them)."""
    from dvc.config import Config

    config = Config(dvc_dir=str(ws.root / ".dvc"))
    name = config["core"].get("remote")
    if not name:
        raise ValueError(f"{ws.root} has no default DVC remote: run `dvc remote add -d local {ws.dvc_remote}`")
    return config["remote"][name]["url"]


def materialize(artifact: Artifact, data_dir: Path) -> None:
    """Replace ``data_dir`` by a copy of the artifact's data files.

    The copy is made beside it and renamed into place, so that a run stopped on the way (SIGTERM, a full
    disk) leaves the previous dataset whole rather than half replaced.
    """
    tmp = data_dir.with_name(f".{data_dir.name}.tmp-{os.getpid()}")
    old = data_dir.with_name(f".{data_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name in DATA_FILES:
            source = artifact.file(name)
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            else:
                shutil.copy2(source, tmp / name)
        try:
            if data_dir.exists():
                os.rename(data_dir, old)
            os.rename(tmp, data_dir)
        except BaseException:
            if old.exists() and not data_dir.exists():  # stopped between the two renames
                os.rename(old, data_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.read_bytes() == b.read_bytes()


@task(name="data-version", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def version_dataset(ws: Workspace, artifact: Artifact) -> str:
    """Materialize the artifact into ``data/``, ``dvc add`` and ``dvc push`` it; return its DVC md5.

    When ``data.dvc`` already records this artifact's md5 and ``data/`` holds its dataset.json, nothing
    is copied or added (the retry covers a remote that is briefly unreachable).
    """
    if not (ws.root / ".dvc").is_dir():
        raise ValueError(
            f"{ws.root} is not a DVC repository: run `dvc init` and `dvc remote add -d local {ws.dvc_remote}` there"
        )
    stamps_path = ws.artifacts / STAGE / STAMPS
    stamps = json.loads(stamps_path.read_text()) if stamps_path.exists() else {}
    known = stamps.get(artifact.version)
    if known and dvc_md5(ws) == known and _same_file(ws.data / "dataset.json", artifact.file("dataset.json")):
        return known
    materialize(artifact, ws.data)
    run_dvc(ws.root, "add", "-q", ws.data.name)
    run_dvc(ws.root, "push", "-q", ws.data_dvc.name)
    md5 = dvc_md5(ws)
    if not md5:
        raise RuntimeError(f"`dvc add` left no md5 in {ws.data_dvc}")
    stamps[artifact.version] = md5
    tmp = stamps_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamps, indent=2, sort_keys=True))
    os.replace(tmp, stamps_path)
    return md5


def documents_frame(data_dir: Path) -> Any:
    """One row per curated document (id, source, split, chars, words), the text left out."""
    import pandas as pd

    rows = [
        {"id": d.id, "source": d.source, "split": split, "chars": len(d.text), "words": len(d.text.split())}
        for split in SPLITS
        for d in iter_split(data_dir, split)
    ]
    return pd.DataFrame(rows, columns=["id", "source", "split", "chars", "words"])


def data_docs(artifact: Artifact) -> Path:
    """The Great Expectations Data Docs index of the artifact's quality gate."""
    return artifact.file(QUALITY_DIR) / DATA_DOCS_INDEX


@task(name="data-track", cache_policy=NO_CACHE)
def log_dataset(ws: Workspace, cfg: DataConfig, artifact: Artifact, md5: str, cached: bool) -> str:
    """One MLflow run (stage ``data``): the dataset input with its DVC md5, counts, GX results, Data Docs.

    Nested under the active run when a parent pipeline has one. Returns the run id.
    """
    import mlflow

    remote = dvc_remote(ws)
    digest = md5.removesuffix(".dir")
    # The DVC remote stores the directory's listing under its md5: that address names this exact dataset.
    source = f"{remote.rstrip('/')}/files/md5/{digest[:2]}/{digest[2:]}.dir"
    tags = {DATASET: md5, DATA_CACHED: str(cached).lower()}
    with stage_run(ws, STAGE, cfg, artifact, tags=tags) as run:
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that the path is ambiguous between
            # them, and warns about integer columns in model signatures, which a dataset profile is not.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple")
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            frame = documents_frame(artifact.path)
            dataset = mlflow.data.from_pandas(frame, source=source, name="ladder-data", digest=md5)
            mlflow.log_input(dataset, context="training", tags={"dvc_path": ws.data_dvc.name, "dvc_remote": remote})
        # Per-source counts stay in dataset.json: source names come from directory names, not all valid metric keys.
        counts = {k: artifact.counts[k] for k in ("files", "documents")}
        numbers = {k: v for k, v in flatten(counts).items() if isinstance(v, int | float)}
        mlflow.log_metrics({**numbers, **artifact.metrics})
        mlflow.log_artifact(str(artifact.file("dataset.json")))
        mlflow.log_artifact(str(artifact.file(QUALITY_DIR) / RESULTS_JSON), "quality")
        mlflow.log_artifacts(str(data_docs(artifact).parent), "data_docs")
        return run.info.run_id


@dataclass(frozen=True)
class DataResult:
    """The data flow's result: the dataset version it made, from which artifact, and what it kept and dropped."""

    dataset_md5: str
    """The DVC md5 of the curated dataset: the version every later stage is given."""
    data: ArtifactRef
    cached: bool
    counts: dict[str, Any]
    """Files read, documents kept and quarantined by reason, and each split's documents and words."""
    data_docs: str
    """The Great Expectations report (HTML) of the quality gate."""
    mlflow_run_id: str


def summarize(artifact: Artifact, md5: str, cached: bool, run_id: str) -> DataResult:
    """What the data flow returns: the dataset version and its counts by reason and split."""
    counts = {"files": artifact.counts["files"], **artifact.counts["documents"]}
    return DataResult(md5, artifact.ref, cached, counts, str(data_docs(artifact)), run_id)


def summary_markdown(summary: DataResult) -> str:
    """The summary as a Markdown report: version, counts by reason and split, links to the quality report."""
    counts = summary.counts
    lines = [
        "# Data stage",
        "",
        f"- dataset version (DVC md5): `{summary.dataset_md5}`",
        f"- artifact version: `{summary.data.version}` ({'cache hit' if summary.cached else 'built'})",
        f"- files: {counts['files']['total']} ({counts['files']['read']} read)",
        f"- documents: {counts['total']} in, {counts['kept']} kept",
        "",
        "| quarantine reason | documents |",
        "|---|---|",
        *(f"| {reason} | {n} |" for reason, n in counts["quarantined"].items()),
        "",
        "| split | documents | words |",
        "|---|---|---|",
        *(f"| {name} | {s['documents']} | {s['words']} |" for name, s in counts["splits"].items()),
        "",
        f"Great Expectations Data Docs: [{summary.data_docs}]({Path(summary.data_docs).as_uri()}), "
        f"also under `data_docs/` in MLflow run `{summary.mlflow_run_id}`.",
    ]
    return "\n".join(lines)


@task(name="data-publish", cache_policy=NO_CACHE)
def publish_summary(summary: DataResult) -> None:
    """Prefect artifacts: the Markdown summary and a table of counts by quarantine reason."""
    create_markdown_artifact(key="data-summary", markdown=summary_markdown(summary), description="Data stage summary")
    table = [{"reason": "kept", "documents": summary.counts["kept"]}]
    table += [{"reason": r, "documents": n} for r, n in summary.counts["quarantined"].items()]
    create_table_artifact(
        key="data-counts-by-reason", table=table, description="Documents kept and quarantined by reason"
    )
