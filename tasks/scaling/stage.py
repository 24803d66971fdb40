"""The scaling stage: train the ladder's rungs, fit the law, predict the target, and gate the target run.

Its artifact (stage ``scaling``) holds ``points.json``, ``fit.json`` (fit, intervals,
self-check, prediction, compute-optimal answers, unidentified parameters, epochs over the
train split), ``summary.md``, ``fidelity.md`` (each prediction against its actual, pending
for the target until the gate), the two plots and, with ``scaling.task_scores.enabled``,
``task_scores.json``: the target's predicted score on every task of the eval suite, from the
rungs' final checkpoints scored on it (:mod:`tasks.scaling.task_scores`). Each rung's run,
and with ``scaling.design=branches`` each of its decay branches, is a ``train`` artifact of its
own, so a rerun retrains nothing that is unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.futures import as_completed
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from ladder.artifacts import Artifact, ArtifactRef, Code, StageOutput, stage_version
from ladder.config import Section
from ladder.figures import png_markdown, write_png
from ladder.tags import SCALING_GATE, SCALING_GATE_REASONS, SCALING_OVERRIDE, input_tags
from ladder.workspace import Workspace
from models.llama import count_params
from tasks.evals.config import RunConfig
from tasks.evals.runner import MetricTable
from tasks.evals.suite import Suite
from tasks.scaling.analysis import fit_scaling_law
from tasks.scaling.fit import FidelityRow, Prediction, ScalingFit, compute_optimal, epochs, gate
from tasks.scaling.ladder import (
    Point,
    ScalingConfig,
    branch_steps,
    branches,
    design_points,
    plan,
    seed_branch,
    target,
    tokens_per_step,
    unique_tokens,
)
from tasks.scaling.plots import (
    fidelity_markdown,
    plot_loss_vs_compute,
    plot_predicted_vs_actual,
    summary_markdown,
)
from tasks.scaling.task_scores import (
    RungScores,
    TaskPrediction,
    compare_task_scores,
    predict_task_scores,
    rung_samples,
    task_items,
    task_score_line,
)
from tasks.train.config import TrainConfig
from tasks.train.shards import PackedShards
from tasks.train.loop import CHECKPOINTS_DIR
from tasks.train.stage import CODE as TRAIN_CODE, MODEL_DIR, STAGE as TRAIN_STAGE, TrainInputs, run_dir, train_model

log = logging.getLogger(__name__)

STAGE = "scaling"
# The rungs' losses are the points the law is fitted to, and the artifact's inputs do not name
# the rungs' versions: so it is built by the training code too. scipy fits the law; numpy resamples it;
# lm-eval scores the rungs on the eval suite, whose version is an input.
CODE = Code(
    ("tasks.scaling", *TRAIN_CODE.packages),
    ("scipy", "lm_eval", *TRAIN_CODE.libraries),
)
POINTS, FIT, SUMMARY, FIDELITY = "points.json", "fit.json", "summary.md", "fidelity.md"
TASK_SCORES = "task_scores.json"
SELF_CHECK_ROW, TARGET_ROW = "self-check: top rung from the others", "target run"
LOSS_VS_COMPUTE, PREDICTED_VS_ACTUAL = "loss_vs_compute.png", "predicted_vs_actual.png"


class ScalingStageConfig(Section):
    """What versions the scaling artifact: the ``scaling`` section, the training config its rungs resize, and how
    lm-eval scores the rungs on the eval suite (the suite's version is an input)."""

    scaling: ScalingConfig
    train: TrainConfig
    evals_run: RunConfig = Field(
        default_factory=RunConfig, description="The evals stage's lm-eval settings: the rungs are scored as the target is."
    )


@dataclass(frozen=True)
class TrainedRung:
    """A rung's run (design=branches: its stable run, the longest branch) and its decay branches, each trained."""

    cfg: TrainConfig
    artifact: Artifact
    branches: tuple[tuple[TrainConfig, Artifact], ...] = ()


def train_rungs(
    ws: Workspace, scaling: ScalingConfig, train: TrainConfig, inputs: TrainInputs, parent_run_id: str | None,
    when_idle: Callable[[int, Artifact], None] | None = None,
) -> list[TrainedRung]:
    """Train every rung and its decay branches (``scaling.parallel`` runs side by side); each is a child run of the
    scaling run.

    A branch starts once its stable run has finished, from a copy of the stable run's checkpoint
    at the branch's decay start; it names the stable run's version among its inputs. A rung
    that will pass over the train split more than once is announced before it trains.
    ``when_idle(index, artifact)`` is called once for each rung whose run has finished, as soon as
    a lane has nothing left to train, while the other lanes go on.
    """
    shards = PackedShards(inputs.train_shards)
    seq_len = shards.seq_len
    configs = plan(scaling, train, shards)
    rung_branches = [branches(scaling, cfg, seq_len) for cfg in configs]
    for cfg in configs:
        passes = epochs(cfg.total_steps(seq_len) * tokens_per_step(cfg, seq_len), unique_tokens(shards))
        if passes > 1:
            log.warning(
                "rung of %.3g parameters will make %.1f epochs over the train split: its points are fitted as "
                "effective data (data-constrained law)", cfg.target_params, passes,
            )
    # A job is (rung, None) for a rung's run, (rung, b) for its branch b, trained on ``job_inputs``.
    # The costliest first, and the next starts as soon as any finishes: in waves of ``parallel``,
    # a core waited for the wave's largest rung (19 s of the tiny profile's 63 s of rungs).
    # Each run has its own threads, so the order changes no run's result.
    def cost(job: tuple[int, int | None]) -> float:
        i, b = job
        steps = configs[i].total_steps(seq_len) if b is None else branch_steps(rung_branches[i][b], seq_len)
        return configs[i].target_params * steps

    waiting: list[tuple[int, int | None]] = sorted(((i, None) for i in range(len(configs))), key=cost, reverse=True)
    job_inputs: dict[tuple[int, int | None], tuple[TrainConfig, TrainInputs]] = {
        (i, None): (cfg, inputs) for i, cfg in enumerate(configs)
    }
    running: dict[Any, tuple[int, int | None]] = {}
    trained: dict[tuple[int, int | None], Artifact] = {}
    idled: set[int] = set()
    store = ws.store()

    def queue_branches(i: int) -> None:
        stable = configs[i]
        for j, branch in enumerate(rung_branches[i]):
            branch_inputs = replace(inputs, versions={**inputs.versions, "stable_run": trained[(i, None)].ref.version})
            branch_dir = run_dir(ws, branch, branch_inputs)  # named by the branch's artifact version
            if store.lookup(TRAIN_STAGE, branch_dir.name) is None:
                seed_branch(stable, run_dir(ws, stable, inputs) / CHECKPOINTS_DIR, branch, branch_dir / CHECKPOINTS_DIR, seq_len)
            job_inputs[(i, j)] = (branch, branch_inputs)
            waiting.append((i, j))
        waiting.sort(key=cost, reverse=True)

    while waiting or running:
        while waiting and len(running) < scaling.parallel:
            job = waiting.pop(0)
            cfg, job_in = job_inputs[job]
            running[train_model.submit(ws, cfg, job_in, parent_run_id=parent_run_id)] = job
        finished = next(as_completed(list(running)))
        job = running.pop(finished)
        trained[job] = finished.result()[0]
        if job[1] is None:
            queue_branches(job[0])
        if when_idle is not None and not waiting and len(running) < scaling.parallel:
            for i in sorted(i for i, branch in trained if branch is None and i not in idled):
                idled.add(i)
                when_idle(i, trained[(i, None)])
    return [
        TrainedRung(cfg, trained[(i, None)], tuple((branch, trained[(i, j)]) for j, branch in enumerate(rung_branches[i])))
        for i, cfg in enumerate(configs)
    ]


def collect_points(scaling: ScalingConfig, rungs: list[TrainedRung], seq_len: int) -> list[Point]:
    """The rungs' points: design=runs, the evaluations along each run past ``min_tokens_fraction``; design=branches,
    each branch's final loss and the stable run's."""
    points: list[Point] = []
    for index, rung in enumerate(rungs):
        runs = [*rung.branches, (rung.cfg, rung.artifact)]
        points += design_points(scaling, index, [(cfg, artifact.path) for cfg, artifact in runs], seq_len)
    return points


class RungScorer:
    """Each rung's final checkpoint scored on the suite's first ``scaling.task_scores.rung_items`` items per task
    (``rung_documents`` documents per perplexity task), one rung at a time: ``score`` as a rung finishes
    (``train_rungs``' ``when_idle``, on a core the last rungs leave free), ``result`` for the rest."""

    def __init__(self, tokenizer_dir: Path, suite: Suite, run: RunConfig, scaling: ScalingConfig) -> None:
        self.tokenizer_dir, self.suite, self.run, self.scaling = tokenizer_dir, suite, run, scaling
        self.samples: dict[int, dict[str, list[dict[str, Any]]]] = {}
        self.seconds = 0.0

    def score(self, index: int, artifact: Artifact) -> None:
        """Score rung ``index``'s final checkpoint, unless it is scored."""
        if index in self.samples:
            return
        started = time.perf_counter()
        task_scores = self.scaling.task_scores
        (self.samples[index],) = rung_samples([artifact.path / MODEL_DIR], self.tokenizer_dir, self.suite, self.run,
                                              task_scores.rung_items, task_scores.rung_documents)
        self.seconds += time.perf_counter() - started

    def result(self, rungs: list[TrainedRung], seq_len: int) -> RungScores:
        """Every rung's scores, scoring those not scored yet."""
        for index, rung in enumerate(rungs):
            self.score(index, rung.artifact)
        items, unpredicted = task_items([self.samples[i] for i in range(len(rungs))], self.suite,
                                        self.scaling.task_scores.metrics)
        for name, why in unpredicted.items():
            log.warning("no score prediction for %s: %s", name, why)
        return RungScores(
            n_params=tuple(float(count_params(rung.cfg.model)["non_embedding"]) for rung in rungs),
            n_tokens=tuple(float(rung.cfg.total_steps(seq_len) * tokens_per_step(rung.cfg, seq_len)) for rung in rungs),
            items=items, unpredicted=unpredicted, higher_is_better=dict(self.suite.higher_is_better),
            seconds=self.seconds,
        )


def _task_scores_markdown(predictions: list[TaskPrediction], unpredicted: dict[str, str]) -> str:
    """The target's predicted task scores, and the self-check on the top rung, as a markdown section."""
    if not predictions and not unpredicted:
        return ""
    lines = [
        "\n## Task scores (two steps: (N, D) -> task loss -> score)\n",
        "| task | predicted | interval | task loss (bits/byte) | self-check: top rung predicted | its actual | limits |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in predictions:
        check = p.self_check
        lines.append(
            f"| {p.name} | {p.predicted:.4f} | [{p.low:.4f}, {p.high:.4f}] ({p.confidence:.0%}) | {p.task_loss:.4f} | "
            f"{check.predicted:.4f} [{check.low:.4f}, {check.high:.4f}] | {check.actual:.4f} "
            f"({'inside' if check.inside else 'OUTSIDE'}) | {len(p.limits) or 'none'} |"
        )
    lines += [""] + [f"- {p.name}: {limit}" for p in predictions for limit in p.limits if not limit.startswith("loss law: ")]
    lines += [f"- {name}: not predicted, {why}" for name, why in unpredicted.items()]
    return "\n".join(lines).rstrip() + "\n"


def _data_markdown(points: list[Point], train_tokens: float | None, form: str) -> str:
    """How often each rung passed over the train split, and the form the law was fitted in."""
    if train_tokens is None:
        return "\n## Data\n\nThe train split's size is unknown: every token is counted as new.\n"
    last = {p.rung: p for p in points if p.n_tokens == max(q.n_tokens for q in points if q.rung == p.rung)}
    rungs = ", ".join(f"N = {p.n_params:.3g}: {epochs(p.n_tokens, train_tokens):.2f}" for _, p in sorted(last.items()))
    return (
        f"\n## Data\n\nThe train split holds {train_tokens:.4g} tokens a pass. Epochs at each rung's last point: "
        f"{rungs}. The law is fitted in the {form} form.\n"
    )


def build_scaling(
    out: Path,
    cfg: ScalingStageConfig,
    points: list[Point],
    target_nd: tuple[float, float],
    train_tokens: float | None = None,
    rung_scores: RungScores | None = None,
) -> StageOutput:
    """Fit the points, predict the target, answer the compute-optimal questions, draw and summarise.

    ``train_tokens``: one pass over the train split (``unique_tokens``); with it, epochs are
    stated and repeated data is fitted in the data-constrained form. ``rung_scores``: the rungs
    scored on the eval suite; with them, every task's score is predicted for the target.
    """
    n = np.array([p.n_params for p in points])
    d = np.array([p.n_tokens for p in points])
    loss = np.array([p.loss for p in points])
    result = fit_scaling_law.fn(n, d, loss, cfg.scaling.fit, train_tokens)
    prediction = result.predict(*target_nd)
    fidelity = [FidelityRow(SELF_CHECK_ROW, result.holdout_prediction, result.holdout.actual), FidelityRow(TARGET_ROW, prediction)]
    budgets = compute_optimal(result.fit, np.array(cfg.scaling.compute_budgets))
    optimal = [
        {"flops": float(c), "n_params": float(np_), "n_tokens": float(nd), "loss": float(lo)}
        for c, np_, nd, lo in zip(cfg.scaling.compute_budgets, budgets.n_params, budgets.n_tokens, budgets.loss)
    ]
    (out / POINTS).write_text(json.dumps([p.__dict__ for p in points], indent=2))
    (out / FIT).write_text(
        json.dumps(
            {**result.to_dict(), "prediction": prediction.to_dict(), "compute_optimal": optimal,
             "fidelity": [row.to_dict() for row in fidelity]},
            indent=2, default=float,
        )
    )
    (out / FIDELITY).write_text("# Ladder fidelity\n\n" + fidelity_markdown(fidelity))
    task_predictions: list[TaskPrediction] = []
    task_metrics: dict[str, float] = {}
    if rung_scores is not None:
        task_predictions = predict_task_scores(
            rung_scores.items, result, (rung_scores.n_params, rung_scores.n_tokens), target_nd, cfg.scaling.task_scores,
            rung_scores.higher_is_better, prediction.limits,
        )
        (out / TASK_SCORES).write_text(json.dumps(
            {"predictions": [p.to_dict() for p in task_predictions], "unpredicted": rung_scores.unpredicted,
             "rung_items": cfg.scaling.task_scores.rung_items, "rung_documents": cfg.scaling.task_scores.rung_documents,
             "scoring_seconds": rung_scores.seconds},
            indent=2, default=float,
        ))
        for p in task_predictions:
            task_metrics.update({f"task/{p.name}/predicted": p.predicted, f"task/{p.name}/low": p.low,
                                 f"task/{p.name}/high": p.high, f"task/{p.name}/self_check_error": p.self_check.error})
        task_metrics.update({
            "task_self_checks_inside": sum(p.self_check.inside for p in task_predictions),
            "task_scoring_seconds": rung_scores.seconds,
        })
    write_png(plot_loss_vs_compute(n, d, loss, result.fit, target=prediction), out / LOSS_VS_COMPUTE)
    write_png(plot_predicted_vs_actual(n, d, loss, result.fit, target=prediction), out / PREDICTED_VS_ACTUAL)
    optimal_md = "\n".join(
        f"| {o['flops']:.1e} | {o['n_params']:.3g} | {o['n_tokens']:.3g} | {o['loss']:.4f} |" for o in optimal
    )
    (out / SUMMARY).write_text(
        summary_markdown(result.fit, result.intervals, result.holdout, prediction, unidentified=result.unidentified)
        + _data_markdown(points, train_tokens, result.form)
        + "\n## Fidelity\n\n" + fidelity_markdown(fidelity)
        + "\n\n## Compute-optimal allocation\n\n| FLOPs | N | D | expected loss |\n|---|---|---|---|\n"
        + optimal_md + "\n"
        + (f"\nThese rest on unidentified parameters ({', '.join(result.unidentified)}): read them as the "
           "fit's extrapolation, not as the law's.\n" if result.unidentified else "")
        + _task_scores_markdown(task_predictions, {} if rung_scores is None else rung_scores.unpredicted)
    )
    holdout = result.holdout
    return StageOutput(
        counts={"rungs": len({p.rung for p in points}), "points": len(points), "tasks_predicted": len(task_predictions)},
        metrics={
            "E": result.fit.E, "A": result.fit.A, "B": result.fit.B, "alpha": result.fit.alpha, "beta": result.fit.beta,
            "r2_log_loss": result.fit.r2_log_loss, "holdout_rel_error": holdout.rel_error,
            "holdout_mean_abs_rel_error": holdout.mean_abs_rel_error,
            "predicted_loss": prediction.loss, "predicted_low": prediction.low, "predicted_high": prediction.high,
            "unidentified_params": len(result.unidentified), "prediction_limits": len(prediction.limits),
            **({} if prediction.epochs is None else {"target_epochs": prediction.epochs, "max_rung_epochs": result.max_epochs}),
            **task_metrics,
        },
    )


@task(name="scaling", cache_policy=NO_CACHE)
def run_scaling(
    ws: Workspace,
    scaling: ScalingConfig,
    train: TrainConfig,
    inputs: TrainInputs,
    suite: Suite | None = None,
    evals_run: RunConfig | None = None,
) -> tuple[Artifact, bool]:
    """The scaling artifact for these inputs: rungs trained (or found), law fitted, target predicted.

    With ``scaling.task_scores.enabled`` the rungs are scored on ``suite`` (lm-eval run as
    ``evals_run`` says) and the target's task scores are predicted too.
    """
    from ladder.tracking import stage_run

    if scaling.task_scores.enabled and suite is None:
        raise ValueError("scaling.task_scores.enabled needs the eval suite to score the rungs on: pass suite "
                         "(tasks.evals.suite.build_suite), or set scaling.task_scores.enabled=false")
    cfg = ScalingStageConfig(scaling=scaling, train=train, evals_run=evals_run or RunConfig())
    shards = PackedShards(inputs.train_shards)
    artifacts = ws.store()
    versions = {**inputs.versions, "suite": suite.version} if scaling.task_scores.enabled and suite else inputs.versions

    produces = [(STAGE, stage_version(STAGE, cfg, versions, CODE))]

    def build(out: Path) -> StageOutput:
        with stage_run(ws, STAGE, cfg, tags=input_tags(inputs.versions), produces=produces) as run:
            scorer = None
            if suite is not None and scaling.task_scores.enabled:
                scorer = RungScorer(inputs.tokenizer_dir, suite, cfg.evals_run, scaling)
            rungs = train_rungs(ws, scaling, train, inputs, run.info.run_id, None if scorer is None else scorer.score)
            scores = None if scorer is None else scorer.result(rungs, shards.seq_len)
            output = build_scaling(
                out, cfg, collect_points(scaling, rungs, shards.seq_len), target(train, shards), unique_tokens(shards),
                scores,
            )
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in output.metrics.items()})
            mlflow.log_artifacts(str(out), artifact_path=STAGE)
            (out / "mlflow_run_id").write_text(run.info.run_id)
        return output

    return artifacts.run_stage(STAGE, cfg, versions, build, code=CODE)


@dataclass(frozen=True)
class ScalingResult:
    """The scaling flow's result: the fitted ladder's artifact and what it predicts for the target run."""

    ladder: ArtifactRef
    fit: dict[str, float]
    """The law's parameters: ``E``, ``A``, ``B``, ``alpha``, ``beta``."""
    self_check_rel_error: float
    """The fit without the top rung, against the top rung's measured loss."""
    unidentified: dict[str, str]
    """Parameters the points cannot pin down, each with the reason: reported, never read as fitted values."""
    prediction: dict[str, Any]
    """The target's ``loss`` with ``low`` and ``high`` of its interval, its ``epochs`` over the train
    split and the ``limits`` of the law's validity it runs into."""
    compute_optimal: list[dict[str, float]]
    mlflow_run_id: str
    cached: bool
    task_predictions: tuple[TaskPrediction, ...] = ()
    """The target's predicted score on each eval task, logged before it trains; compare them with its measured
    scores by ``tasks.scaling.task_scores.compare_task_scores``. Empty with ``scaling.task_scores.enabled=false``."""


@task(name="publish-scaling-report", cache_policy=NO_CACHE)
def publish_scaling(artifact: Artifact, cached: bool) -> ScalingResult:
    """Prefect artifacts of the fit and prediction (logged before the target run starts)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="scaling-summary",
        markdown=artifact.file(SUMMARY).read_text()
        + "\n\n" + png_markdown(artifact.file(LOSS_VS_COMPUTE))
        + "\n\n" + png_markdown(artifact.file(PREDICTED_VS_ACTUAL)),
        description="Scaling-law fit of the ladder, its self-check and the target's prediction.",
    )
    fit = json.loads(artifact.file(FIT).read_text())
    return ScalingResult(
        ladder=artifact.ref,
        fit={k: fit["fit"][k] for k in ("E", "A", "B", "alpha", "beta")},
        self_check_rel_error=fit["holdout"]["rel_error"],
        unidentified=fit["unidentified"],
        prediction=fit["prediction"],
        compute_optimal=fit["compute_optimal"],
        mlflow_run_id=artifact.file("mlflow_run_id").read_text(),
        cached=cached,
        task_predictions=tuple(stored_task_predictions(artifact)),
    )


def stored_task_predictions(artifact: Artifact) -> list[TaskPrediction]:
    """The task-score predictions a scaling artifact recorded; none when it was built without them."""
    if not (artifact.path / TASK_SCORES).exists():
        return []
    return [TaskPrediction.from_dict(raw) for raw in json.loads(artifact.file(TASK_SCORES).read_text())["predictions"]]


def stored_fidelity(artifact: Artifact, actual_loss: float) -> list[FidelityRow]:
    """The artifact's fidelity rows, the target's with its ``actual_loss`` filled in."""
    rows = [FidelityRow.from_dict(row) for row in json.loads(artifact.file(FIT).read_text())["fidelity"]]
    return [replace(row, actual=actual_loss) if row.name == TARGET_ROW else row for row in rows]


def stored_fit(artifact: Artifact) -> tuple[ScalingFit, Prediction, list[Point]]:
    """The fit, prediction and points a scaling artifact recorded."""
    stored = json.loads(artifact.file(FIT).read_text())
    fit_values = dict(stored["fit"])
    logs = {name: float(np.log(fit_values.pop(key))) for name, key in (("a", "A"), ("b", "B"), ("e", "E"))}
    fit = ScalingFit(**logs, **fit_values)
    prediction = Prediction.from_dict(stored["prediction"])
    points = [Point(**p) for p in json.loads(artifact.file(POINTS).read_text())]
    return fit, prediction, points


@task(name="scaling-gate", cache_policy=NO_CACHE)
def target_gate(
    ws: Workspace, artifact: Artifact, scaling: ScalingConfig, actual_loss: float, actual_stderr: float | None = None
) -> dict[str, Any]:
    """Hold the target run to its prediction; the decision, reasons, plot and any override are recorded.

    Returns ``status`` (passed, failed or overridden), ``passed``, ``reasons``, ``rel_error``,
    ``actual``, ``prediction`` (the ladder's, with its interval, epochs and limits),
    ``override_reason`` and ``fidelity`` (the ladder's fidelity table as markdown; also logged to
    the scaling run as ``scaling/fidelity.md`` and ``scaling/fidelity.json``). A prediction with
    limits is judged under ``scaling.fit.limits_policy``; ``actual_stderr``, the validation loss's
    own standard error, widens the interval the actual is held to (``tasks.scaling.fit.gate``).
    """
    import tempfile

    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact

    from ladder.tracking import experiment_id

    fit, prediction, points = stored_fit(artifact)
    decision = gate(
        prediction, actual_loss, scaling.fit.gate_rel_tolerance,
        limits_policy=scaling.fit.limits_policy, widen_factor=scaling.fit.widen_factor, actual_stderr=actual_stderr,
    )
    fidelity = stored_fidelity(artifact, actual_loss)
    fidelity_md = fidelity_markdown(fidelity)
    overridden = not decision.passed and scaling.override_gate
    status = "passed" if decision.passed else ("overridden" if overridden else "failed")
    result = {**decision.to_dict(), "status": status, "actual": actual_loss, "prediction": prediction.to_dict(),
              "override_reason": scaling.override_reason if overridden else "", "fidelity": fidelity_md}
    experiment_id(ws)
    client = MlflowClient()
    run_id = artifact.file("mlflow_run_id").read_text()
    client.log_metric(run_id, "target_actual_loss", actual_loss)
    client.log_metric(run_id, "target_rel_error", decision.rel_error)
    client.set_tag(run_id, SCALING_GATE, status)
    client.set_tag(run_id, SCALING_GATE_REASONS, "; ".join(decision.reasons))
    if overridden:
        client.set_tag(run_id, SCALING_OVERRIDE, scaling.override_reason)
    figure = plot_predicted_vs_actual(
        [p.n_params for p in points], [p.n_tokens for p in points], [p.loss for p in points], fit,
        target=prediction, actual=actual_loss,
    )
    with tempfile.TemporaryDirectory() as tmp:
        png = write_png(figure, Path(tmp) / "target_predicted_vs_actual.png")
        client.log_artifact(run_id, str(png), artifact_path=STAGE)
        (Path(tmp) / FIDELITY).write_text("# Ladder fidelity\n\n" + fidelity_md)
        (Path(tmp) / "fidelity.json").write_text(json.dumps([row.to_dict() for row in fidelity], indent=2))
        client.log_artifact(run_id, str(Path(tmp) / FIDELITY), artifact_path=STAGE)
        client.log_artifact(run_id, str(Path(tmp) / "fidelity.json"), artifact_path=STAGE)
        create_markdown_artifact(
            key="scaling-gate",
            markdown=f"# Scaling-law gate: {status}\n\n" + "\n".join(f"- {r}" for r in decision.reasons)
            + (f"\n- overridden: {scaling.override_reason}" if overridden else "")
            + "\n\n## Ladder fidelity\n\n" + fidelity_md + "\n" + png_markdown(png),
            description="The target run against the ladder's prediction.",
        )
    return result


@task(name="record-task-scores", cache_policy=NO_CACHE)
def record_task_scores(
    ws: Workspace, artifact: Artifact, predictions: Sequence[TaskPrediction], measured: MetricTable
) -> list[str]:
    """The target's measured eval scores (its ``MetricTable``) against the ladder's task ``predictions``
    (``ScalingResult.task_predictions`` of ``artifact``), one line per task.

    The actual scores and the comparison are logged to the scaling run (``task/<task>/<metric>/actual``,
    ``scaling/task_scores_vs_actual.json``) and shown as the Prefect artifact ``task-scores``. The
    release gate judges the same comparison (``tasks.evals.stage.TaskPredictions``).
    """
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact

    from ladder.tracking import experiment_id

    rows = compare_task_scores(predictions, measured)
    lines = [task_score_line(row) for row in rows]
    experiment_id(ws)
    client = MlflowClient()
    run_id = artifact.file("mlflow_run_id").read_text()
    for row in rows:
        if row.actual is not None:
            client.log_metric(run_id, f"task/{row.prediction.name}/actual", row.actual)
    client.log_dict(run_id, [row.to_dict() for row in rows], f"{STAGE}/task_scores_vs_actual.json")
    create_markdown_artifact(
        key="task-scores",
        markdown="# Task scores: predicted by the ladder, measured on the target\n\n" + "\n".join(f"- {line}" for line in lines),
        description="The target's eval-task scores against the ladder's predictions.",
    )
    return lines
