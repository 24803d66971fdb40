"""The scaling flow: train the ladder's rungs, fit L(N, D), predict the target run before it starts."""

from __future__ import annotations

from typing import Any

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.config import load
from ladder.workspace import Workspace
from tasks.scaling.stage import publish_scaling, run_scaling
from tasks.train.stage import resolve_inputs_task


@flow(name="scaling")
def scaling_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    shards_dir: str | None = None,
    tokenizer_dir: str | None = None,
    dataset_md5: str | None = None,
) -> dict[str, Any]:
    """Rungs of the ``scaling`` section, resized from the ``train`` section (the target run).

    Returns the fit, the self-check error on the top rung, the target's prediction with its
    interval, the compute-optimal answers, the artifact version (``scaling_version``) and
    whether it was cached.
    """
    progress.start("scaling")
    ws = Workspace.from_env()
    cfg = load(ProjectConfig, profile, overrides or [])
    inputs = resolve_inputs_task(ws, shards_dir, tokenizer_dir, dataset_md5)
    artifact, cached = run_scaling(ws, cfg.scaling, cfg.train, inputs)
    summary = {**publish_scaling(artifact), "cached": cached}
    shown = {"self_check_rel_error": f"{summary['self_check_rel_error']:+.2%}",
             "predicted_loss": round(summary["prediction"]["loss"], 4), "cached": cached}
    progress.finish("scaling", shown)
    return summary
