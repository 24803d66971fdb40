"""The data flow: raw corpus -> quality-gated, deduplicated, split dataset, versioned by DVC, tracked in MLflow."""

from __future__ import annotations

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.config import load
from ladder.workspace import Workspace
from tasks.data.corpus import corpus_version, list_inputs
from tasks.data.curate import curate
from tasks.data.signals import stop_on_signals
from tasks.data.version import DataResult, log_dataset, publish_summary, summarize, version_dataset


@flow(name="data")
def data_flow(profile: str = "tiny", overrides: list[str] | None = None) -> DataResult:
    """Curate and version the dataset of ``profile`` (with dotted ``overrides`` of its ``data`` section).

    Returns the dataset version (its DVC md5) with the data artifact it came from, whether it was
    a cache hit (an unchanged corpus and config did no work), and the counts by reason and split.
    SIGTERM and SIGINT stop it within seconds, leaving earlier output intact (``tasks.data.signals``).
    """
    progress.start("data")
    cfg = load(ProjectConfig, profile, overrides or []).data
    ws = Workspace.from_env()
    with stop_on_signals("data stage"):
        files = list_inputs(cfg.input)
        artifact, cached = curate(ws, cfg, files, corpus_version(files))
        md5 = version_dataset(ws, artifact)
        summary = summarize(artifact, md5, cached, log_dataset(ws, cfg, artifact, md5, cached))
        publish_summary(summary)
    shown = {"dataset_md5": md5, "kept": summary.counts["kept"], "quarantined": summary.counts["quarantined"], "cached": cached}
    progress.finish("data", shown)
    return summary
