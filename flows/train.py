"""The train flow: packed shards -> trained model, resumable, with automatic spike rollback."""

from __future__ import annotations

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.config import load
from ladder.workspace import Workspace
from tasks.tokenizer.stage import Tokenized
from tasks.train.stage import TrainResult, publish, resolve_inputs_task, train_model


@flow(name="train")
def train_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    tokenized: Tokenized | None = None,
) -> TrainResult:
    """Train the ``train`` section of ``profile`` on ``tokenized`` (by default the latest packed
    shards); an unchanged rerun is a cache hit."""
    progress.start("train")
    ws = Workspace.from_env()
    cfg = load(ProjectConfig, profile, overrides or []).train
    inputs = resolve_inputs_task(ws, tokenized)
    artifact, cached = train_model(ws, cfg, inputs)
    result = publish(artifact, cached)
    shown = {"final_val_loss": result.final_val_loss, "steps": result.steps, "spike_events": result.spike_events, "cached": cached}
    progress.finish("train", shown)
    return result
