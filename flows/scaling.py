"""The scaling flow: train the ladder's rungs, fit L(N, D), predict the target run (its loss and, from the
rungs scored on the eval suite, its task scores) before it starts."""

from __future__ import annotations

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.config import load
from ladder.workspace import Workspace
from tasks.data.dataset import resolve_dataset
from tasks.evals.suite import build_suite
from tasks.scaling.stage import ScalingResult, publish_scaling, run_scaling
from tasks.tokenizer.stage import Tokenized
from tasks.train.stage import resolve_inputs_task


@flow(name="scaling")
def scaling_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    tokenized: Tokenized | None = None,
) -> ScalingResult:
    """Rungs of the ``scaling`` section, resized from the ``train`` section (the target run), trained
    on ``tokenized`` (by default the latest packed shards). With ``scaling.task_scores.enabled`` the
    rungs are scored on the eval suite of the shards' dataset version, the one the evals stage builds."""
    progress.start("scaling")
    ws = Workspace.from_env()
    cfg = load(ProjectConfig, profile, overrides or [])
    inputs = resolve_inputs_task(ws, tokenized)
    suite = None
    if cfg.scaling.task_scores.enabled:
        suite = build_suite(ws, cfg.evals.suite, resolve_dataset(ws, inputs.versions["dataset"]))
    artifact, cached = run_scaling(ws, cfg.scaling, cfg.train, inputs, suite, cfg.evals.run)
    result = publish_scaling(artifact, cached)
    shown = {"self_check_rel_error": f"{result.self_check_rel_error:+.2%}",
             "predicted_loss": round(result.prediction["loss"], 4),
             "task_predictions": len(result.task_predictions), "cached": cached}
    progress.finish("scaling", shown)
    return result
