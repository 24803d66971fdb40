"""The train flow: packed shards -> trained model, resumable, with automatic spike rollback."""

from __future__ import annotations

from typing import Any

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.config import load
from ladder.workspace import Workspace
from tasks.train.stage import publish, resolve_inputs_task, train_model


@flow(name="train")
def train_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    shards_dir: str | None = None,
    tokenizer_dir: str | None = None,
    dataset_md5: str | None = None,
) -> dict[str, Any]:
    """Train the ``train`` section of ``profile`` on packed shards; an unchanged rerun is a cache hit.

    ``shards_dir`` (holding ``train/`` and ``validation/``) defaults to the latest ``shards``
    artifact, and ``tokenizer_dir`` and ``dataset_md5`` to what that artifact was built from.
    Returns ``model_dir``, ``final_val_loss``, ``steps``, ``spike_events`` (how many
    rollbacks), ``mlflow_run_id``, ``cached``, ``tokens_per_s``, ``mfu`` and ``artifact_version``.
    """
    progress.start("train")
    ws = Workspace.from_env()
    cfg = load(ProjectConfig, profile, overrides or []).train
    inputs = resolve_inputs_task(ws, shards_dir, tokenizer_dir, dataset_md5)
    artifact, cached = train_model(ws, cfg, inputs)
    summary = publish(artifact, cached)
    shown = {key: summary[key] for key in ("final_val_loss", "steps", "spike_events", "cached")}
    progress.finish("train", shown)
    return summary
