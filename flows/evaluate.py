"""The evaluate flow: held-out eval suite -> lm-eval -> release gate -> registry version with lineage."""

from __future__ import annotations

from typing import Any

from prefect import flow

from ladder import progress
from ladder.config import load
from ladder.project import ProjectConfig
from ladder.workspace import Workspace
from tasks.evals.gate import check_policy, gate
from tasks.evals.registry import PROMOTED, REJECTED
from tasks.evals.runner import evaluate_checkpoint, table_from_rows
from tasks.evals.stage import (
    collect_lineage,
    earlier_verdict,
    judgement_key,
    log_evaluation,
    publish_report,
    record,
    register,
    resolve_candidate,
    score_champion,
    verdict,
)
from tasks.evals.suite import build_suite
from tasks.data.version import dataset_version

# What the progress display shows of a verdict.
SHOWN = ("decision", "version", "alias", "reused")


@flow(name="evaluate")
def evaluate_flow(
    profile: str = "tiny",
    overrides: list[str] | None = None,
    model_dir: str | None = None,
    training_run_id: str | None = None,
    dataset_md5: str | None = None,
    lineage: dict[str, str] | None = None,
    scaling_gate: dict[str, Any] | None = None,
    base_metrics: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint, gate it against the champion, and register it as a new version.

    Judging the same weights on the same suite, policy and inputs again (a rerun of the
    pipeline) registers nothing: it returns the earlier version's verdict, with ``reused``.

    ``model_dir`` defaults to the latest pretrain artifact's model; ``dataset_md5`` to the
    version in ``data.dvc``. ``lineage`` adds links the caller knows (``ladder_run``,
    ``alignment_runs``, ...); ``scaling_gate`` is the scaling stage's decision (``passed``,
    ``reasons``, optional ``prediction`` and ``override``); ``base_metrics`` are the ``metrics``
    this flow returned for the base model of an aligned candidate, for the alignment-tax bound.

    Returns ``decision`` (promoted or rejected), ``reasons``, ``version``, ``alias``,
    ``metrics`` (one row per metric), ``eval_run_id`` and what the candidate was compared with.
    """
    progress.start("evaluate")
    cfg = load(ProjectConfig, profile, overrides or []).evals
    ws = Workspace.from_env()
    md5 = dataset_md5 or dataset_version(ws)
    base = table_from_rows(base_metrics) if base_metrics is not None else None
    candidate = resolve_candidate(ws, model_dir, training_run_id)
    suite = build_suite(ws, cfg.suite, md5)
    check_policy(cfg.gate, suite.metrics)
    key = judgement_key(candidate, suite, cfg, base_metrics, scaling_gate)
    earlier = earlier_verdict(cfg.registered_model, key, suite)
    if earlier is not None:
        progress.finish("evaluate", {k: earlier[k] for k in SHOWN})
        return earlier
    evaluation = evaluate_checkpoint(candidate.model_dir, suite, cfg.run)
    champion = score_champion(cfg.registered_model, suite, cfg.run)
    decision = gate(evaluation.table, cfg.gate, champion.table if champion else None, base, scaling_gate)
    eval_run_id, model_uri = log_evaluation(ws, cfg, suite, evaluation, candidate, md5)
    links = collect_lineage(ws, md5, candidate, eval_run_id, suite, scaling_gate, lineage)
    version = register(cfg.registered_model, model_uri, links, suite, eval_run_id, key, champion.version if champion else None)
    facts = {
        "candidate": f"{cfg.registered_model} version {version} ({candidate.model_dir})",
        "compared with": champion.note if champion else "no champion yet",
        "eval run": eval_run_id,
        "eval suite": f"{suite.version} ({evaluation.items} items, {evaluation.items_per_second:.1f} items/s)",
        "dataset": md5,
        "training run": candidate.training_run_id or "unknown",
    }
    report_uri = publish_report(eval_run_id, decision, facts, evaluation.table, cfg, champion, base)
    alias = record(cfg.registered_model, version, decision, report_uri)
    summary = verdict(
        cfg.registered_model, version, decision=PROMOTED if decision.passed else REJECTED, reasons=decision.reasons,
        alias=alias, champion_before=champion.version if champion else None, table=evaluation.table,
        eval_run_id=eval_run_id, suite=suite, links=links, reused=False,
    )
    progress.finish("evaluate", {k: summary[k] for k in SHOWN})
    return summary
