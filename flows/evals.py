"""The evals flow: held-out eval suite -> lm-eval -> release gate -> registry version with lineage."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.artifacts import ArtifactRef
from ladder.config import load
from ladder.workspace import Workspace
from tasks.evals.gate import ScalingGate, check_policy
from tasks.evals.registry import PROMOTED, REJECTED
from tasks.evals.runner import Scores, evaluate_checkpoint
from tasks.evals.stage import (
    TaskPredictions,
    Verdict,
    collect_lineage,
    earlier_verdict,
    judge_against,
    judge_and_record,
    judged_inputs,
    log_evaluation,
    register,
    resolve_candidate,
    verdict,
)
from tasks.evals.suite import build_suite
from tasks.data.dataset import resolve_dataset
from tasks.train.stage import TrainedModel


def shown(result: Verdict) -> dict[str, Any]:
    """What the progress display shows of a verdict."""
    return {"decision": result.decision, "version": result.version, "alias": result.alias, "reused": result.reused}


@flow(name="evals")
def evals_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    model: TrainedModel | None = None,
    model_dir: str | None = None,
    training_run_id: str | None = None,
    dataset_md5: str | None = None,
    lineage: dict[str, ArtifactRef] | None = None,
    scaling_gate: ScalingGate | None = None,
    base: Scores | None = None,
    task_predictions: TaskPredictions | None = None,
) -> Verdict:
    """Evaluate a checkpoint, gate it against the champion, and register it as a new version.

    Judging the same weights on the same suite, policy and inputs against the same champion
    again (a rerun of the pipeline) registers nothing: it returns the earlier version's verdict,
    with ``reused``. If another evaluation moves the champion while this one judges, the
    candidate is judged again against the new champion before anything is recorded.

    The candidate is ``model`` (what the train flow returned), else the checkpoint in
    ``model_dir`` (trained elsewhere: ``training_run_id`` names its run), else the latest train
    artifact's model; ``dataset_md5`` defaults to the version in ``data.dvc``. ``lineage`` names
    artifacts the caller knows that are not inputs of the model (``{"scaling": ref}``): they are
    walked into its lineage too;
    ``scaling_gate`` is the scaling-law gate's outcome on the target (a deployment's JSON form of it
    is checked the same way), judged under this policy's ``scaling_gate`` mode; ``base`` is the base
    model of an aligned candidate scored on the same suite (table and per-item results), which
    its alignment tax is paired against; ``task_predictions`` are the ladder's predictions of the
    candidate's task scores (for the target the ladder was fitted for), each a check of the gate.

    Returns the :class:`~tasks.evals.stage.Verdict`: decision (promoted or rejected), reasons,
    version, alias, metrics, eval run and what the candidate was compared with.
    """
    progress.start("evals")
    cfg = load(ProjectConfig, profile, overrides or []).evals
    ws = Workspace.from_env()
    dataset = resolve_dataset(ws, dataset_md5)
    md5 = dataset.md5
    scaling = scaling_gate.under(cfg.gate.scaling_gate) if scaling_gate is not None else None
    candidate = resolve_candidate(ws, model, model_dir, training_run_id)
    suite = build_suite(ws, cfg.suite, dataset)
    check_policy(cfg.gate, suite.metrics)
    inputs = judged_inputs(candidate, suite, cfg, base, scaling, task_predictions)
    earlier = earlier_verdict(cfg.registered_model, inputs, suite)
    if earlier is not None:
        progress.finish("evals", shown(earlier))
        return earlier
    evaluation = evaluate_checkpoint(candidate.model_dir, suite, cfg.run)
    eval_run_id, model_uri = log_evaluation(ws, cfg, suite, evaluation, candidate, md5)
    links = collect_lineage(ws, candidate, eval_run_id, suite, scaling, lineage)
    version = register(cfg, model_uri, links, suite, eval_run_id, scaling)
    facts = {
        "candidate": f"{cfg.registered_model} version {version} ({candidate.model_dir})",
        "eval run": eval_run_id,
        "eval suite": f"{suite.version} ({evaluation.items} items, {evaluation.items_per_second:.1f} items/s)",
        "dataset": md5,
        "training run": candidate.training_run_id or "unknown",
    }
    judge = partial(judge_against, cfg=cfg, suite=suite, table=evaluation.table, base=base, scaling_gate=scaling,
                    task_predictions=task_predictions, eval_run_id=eval_run_id, facts=facts)
    judgement, alias = judge_and_record(cfg.registered_model, version, inputs, judge)
    decision, champion = judgement.decision, judgement.champion
    summary = verdict(
        cfg.registered_model, version, decision=PROMOTED if decision.passed else REJECTED, reasons=decision.reasons,
        alias=alias, champion_before=champion.version if champion else None, table=evaluation.table,
        eval_run_id=eval_run_id, suite=suite, links=links, reused=False,
    )
    progress.finish("evals", shown(summary))
    return summary
