"""The end-to-end pipeline: each stage a subflow, skipped by the stage contract when unchanged.

data -> tokenizer -> scaling (fit the ladder, predict the target) -> train (the target) -> scaling gate ->
evals and gate -> align -> evals and gate. A failed scaling gate stops the pipeline
before alignment unless ``scaling.override_gate`` is set (recorded as overridden, with its
reason) or the release policy makes it advisory (recorded as advisory); either way its status
reaches both release gates and the registry as it is. With ``dataset_md5`` the run trains that
dataset version and curates nothing. The flow's result (or its failure message) says which
gate decided what.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from app.project import ProjectConfig
from flows.align import align_flow
from flows.data import data_flow
from flows.evals import evals_flow
from flows.scaling import scaling_flow
from flows.tokenizer import tokenizer_flow
from flows.train import train_flow
from ladder.config import load
from ladder.workspace import Workspace
from tasks.align.report import ACCURACY
from tasks.data.dataset import resolve_dataset
from tasks.evals.gate import scaling_outcome
from tasks.evals.runner import table_from_rows
from tasks.evals.stage import TaskPredictions
from tasks.scaling.plots import fidelity_line
from tasks.scaling.stage import record_task_scores, stored_fidelity, target_gate


class GateStopped(ValueError):
    """A gate stopped the pipeline; the message names the gate and its reasons."""


@task(name="publish-pipeline-summary", cache_policy=NO_CACHE)
def publish_summary(summary: dict[str, Any]) -> None:
    lines = [f"- **{key}**: {value}" for key, value in summary.items()]
    create_markdown_artifact(
        key="pipeline-summary", markdown="# ladder pipeline\n\n" + "\n".join(lines),
        description="What the pipeline produced and which gates decided what.",
    )


@flow(name="pipeline")
def pipeline_flow(
    profile: str = "tiny", overrides: list[str] | None = None, dataset_md5: str | None = None
) -> dict[str, Any]:
    """The whole method on the configured corpus, or on dataset version ``dataset_md5`` when given.

    A data-version trigger passes ``dataset_md5``: the run then trains exactly that version,
    taken from this workspace or pulled from the DVC remote, and curates nothing.
    """
    started = time.perf_counter()
    overrides = overrides or []
    common = {"profile": profile, "overrides": overrides}
    cfg = load(ProjectConfig, profile, overrides)
    ws = Workspace.from_env()

    md5 = dataset_md5 or data_flow(**common).dataset_md5
    dataset = resolve_dataset(ws, md5)
    tok = tokenizer_flow(**common, dataset_md5=md5)
    fitted = scaling_flow(**common, tokenized=tok.tokenized)
    target = train_flow(**common, tokenized=tok.tokenized)
    ladder_artifact = ws.store().get(fitted.ladder)
    scaling = target_gate(ws, ladder_artifact, cfg.scaling, target.final_val_loss, target.final_val_loss_stderr)
    scaling_release = scaling_outcome(scaling, cfg.evals.gate)
    if scaling_release.blocks:
        raise GateStopped("stopped before alignment by the scaling-law gate: " + "; ".join(scaling_release.reasons))
    ladder = {"scaling": fitted.ladder}
    predicted = TaskPredictions(list(fitted.task_predictions), cfg.scaling.task_scores.gate)
    base = evals_flow(
        **common, model=target.model, dataset_md5=md5, lineage=ladder, scaling_gate=scaling_release,
        task_predictions=predicted if fitted.task_predictions else None,
    )
    task_scores = record_task_scores(ws, ladder_artifact, fitted.task_predictions, table_from_rows(base.metrics))
    aligned = align_flow(**common, base_model=target.model, dataset_md5=md5, lineage=ladder, scaling_gate=scaling_release)
    documents = dataset.info["counts"]["documents"]
    quarantined = Counter(documents["quarantined"])
    summary = {
        "dataset version (DVC md5)": md5,
        "documents kept / quarantined": f"{documents['kept']} / {quarantined.total()} ("
        + ", ".join(f"{reason} {count}" for reason, count in quarantined.most_common()) + ")",
        "tokenizer": f"{tok.chosen} ({tok.rule})",
        "ladder fit": ", ".join(
            f"{k} unidentified ({fitted.unidentified[k]})" if k in fitted.unidentified else f"{k}={v:.4g}"
            for k, v in fitted.fit.items()
        ),
        "ladder self-check error (top rung)": f"{fitted.self_check_rel_error:+.2%}",
        "target prediction": f"{fitted.prediction['loss']:.4f} [{fitted.prediction['low']:.4f}, {fitted.prediction['high']:.4f}]",
        "target actual": f"{target.final_val_loss:.4f}" + (
            "" if target.final_val_loss_stderr is None else f" ± {target.final_val_loss_stderr:.4f} (standard error)"
        ),
        "scaling gate": f"{scaling_release.status} ({scaling['rel_error']:+.2%})",
        "ladder fidelity": "\n".join(fidelity_line(row) for row in stored_fidelity(ladder_artifact, target.final_val_loss)),
        "task scores, predicted vs actual": "\n".join(task_scores) or "not predicted (scaling.task_scores.enabled=false)",
        "base model gate": base.line(),
        "held-out task score (base / SFT / DPO)": " / ".join(f"{row[ACCURACY]:.4f}" for row in aligned.table),
        "alignment": f"reward margin {aligned.reward_margin:+.4f}, within tax bound: {aligned.passed_tax_bound}",
        "aligned model gate": aligned.registry.line() if aligned.registry else "not submitted (align.register_candidate=false)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    publish_summary(summary)
    return summary
