"""The evaluation stage's units of work around the registry: find the candidate, log it, judge it, record it."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import ArtifactRef, file_sha256
from ladder.config import content_hash
from ladder.figures import png_markdown, write_png
from ladder.lineage import containing
from ladder.tags import DATASET, EVAL_RUN, MODEL_DIR, SUITE_TAG, TRAINING_RUN
from ladder.tracking import producing_run, stage_run
from ladder.workspace import Workspace
from tasks.evals import lineage, registry
from tasks.evals.config import EvalConfig, RunConfig
from tasks.evals.gate import (
    ADVISORY,
    GATE_PLOT,
    TASK_PREDICTION,
    Check,
    Decision,
    ScalingGate,
    comparisons_figure,
    gate,
    report_markdown,
)
from tasks.evals.runner import Evaluation, MetricTable, Scores, run_lm_eval, table_rows, table_to_dict
from tasks.evals.stats import ItemResults, item_results_from_dict, item_results_to_dict
from tasks.evals.suite import DROPPED, ITEMS_DIR, SUITE_JSON, Suite
from tasks.scaling.task_scores import TaskPrediction, compare_task_scores, task_score_line
from tasks.train.stage import MODEL_DIR as TRAIN_MODEL_DIR, STAGE as TRAIN_STAGE, TrainedModel
STAGE = "evals"
GATE_REPORT = "gate_report.md"
# Every metric item by item (tasks.evals.stats.ItemScores), so that a later candidate is paired
# against this version without scoring it again.
PER_ITEM = "per_item.json"
# How often a candidate is judged again when concurrent evaluations keep moving the champion
# before its decision is recorded; each time, another candidate was promoted in between.
JUDGEMENTS = 3


@dataclass(frozen=True)
class Candidate:
    """The checkpoint to evaluate and the run that trained it."""

    model_dir: Path
    training_run_id: str | None
    artifact: ArtifactRef | None = None
    """The stage artifact holding the checkpoint, whose manifests its lineage walks; None for a
    checkpoint from outside the store."""


def weights_sha256(model_dir: Path) -> str:
    """One digest of the checkpoint's weights (every safetensors shard): the candidate's identity, wherever it lies."""
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{model_dir} holds no *.safetensors weights: pass a Hugging Face checkpoint saved with safetensors")
    return content_hash({shard.name: file_sha256(shard) for shard in shards})


def judged_inputs(
    candidate: Candidate, suite: Suite, cfg: EvalConfig, base: Scores | None, scaling_gate: ScalingGate | None,
    task_predictions: TaskPredictions | None = None,
) -> str:
    """A hash of what a gate decision depends on besides the champion: the weights, the suite, how they are run and judged.

    ``scaling_gate`` is the outcome under the policy in force (``ScalingGate.under``).
    """
    return content_hash({
        "weights": weights_sha256(candidate.model_dir), "suite": suite.version, "run": cfg.run.model_dump(),
        "gate": cfg.gate.model_dump(),
        "base": None if base is None else {"table": table_rows(base.table), "items": item_results_to_dict(base.items)},
        "scaling_gate": None if scaling_gate is None else scaling_gate.to_dict(),
        "task_predictions": None if task_predictions is None else task_predictions.to_dict(),
    })


@dataclass(frozen=True)
class TaskPredictions:
    """The ladder's predictions of a target's eval-task scores, and what a miss does (``scaling.task_scores.gate``)."""

    predictions: list[TaskPrediction]
    mode: str = "advisory"  # a score outside its interval: advisory reports it, required fails the gate

    def to_dict(self) -> dict[str, Any]:
        return {"predictions": [p.to_dict() for p in self.predictions], "mode": self.mode}

    def checks(self, table: MetricTable) -> list[Check]:
        """One check per predicted task: the measured score inside the prediction's interval (widened by
        its own standard error), or a miss, which fails under ``required`` and is advisory otherwise."""
        checks = []
        for row in compare_task_scores(self.predictions, table):
            line = task_score_line(row).removeprefix(f"{row.prediction.name}: ")
            if row.inside is not False:
                checks.append(Check(TASK_PREDICTION, row.prediction.name, True, line))
            elif self.mode == "required":
                checks.append(Check(TASK_PREDICTION, row.prediction.name, False, line))
            else:
                checks.append(Check(TASK_PREDICTION, row.prediction.name, True, line, ADVISORY))
        return checks


@dataclass(frozen=True)
class Verdict:
    """What the evals flow returns about a registry version, judged now or (``reused``) earlier.

    ``alias`` is None for a version that holds none (a later champion took it); ``metrics`` has one
    row per metric (``tasks.evals.runner.table_rows``); ``lineage`` is the version's tree.
    """

    decision: str
    reasons: list[str]
    version: str
    alias: str | None
    registered_model: str
    champion_before: str | None
    metrics: list[dict[str, Any]]
    eval_run_id: str
    suite_version: str
    contaminated_items: int
    lineage: dict[str, Any]
    reused: bool

    def line(self) -> str:
        """``promoted: NAME vN @alias``, the alias left out when the version holds none."""
        alias = f" @{self.alias}" if self.alias else ""
        return f"{self.decision}: {self.registered_model} v{self.version}{alias}"


def verdict(
    name: str, version: str, *, decision: str, reasons: list[str], alias: str | None, champion_before: str | None,
    table: MetricTable, eval_run_id: str, suite: Suite, links: dict[str, Any], reused: bool,
) -> Verdict:
    """The :class:`Verdict` on version ``version`` of ``name``, judged on ``suite`` with results ``table``."""
    return Verdict(
        decision=decision, reasons=reasons, version=version, alias=alias, registered_model=name,
        champion_before=champion_before, metrics=table_rows(table), eval_run_id=eval_run_id, suite_version=suite.version,
        contaminated_items=suite.artifact.metrics["contaminated_items"], lineage=links, reused=reused,
    )


@task(name="find-earlier-verdict", cache_policy=NO_CACHE)
def earlier_verdict(name: str, inputs: str, suite: Suite) -> Verdict | None:
    """The verdict on the version already judged on ``inputs`` against the current champion, or None.

    A rerun reports that verdict instead of registering a copy (see ``registry.decided_version``).
    """
    found = registry.decided_version(name, inputs)
    if found is None:
        return None
    eval_run_id = found.tags[EVAL_RUN]
    return verdict(
        name, str(found.version), decision=found.tags[registry.DECISION_TAG], reasons=registry.reasons(found),
        alias=next(iter(registry.aliases_of(name, found.version)), None),
        champion_before=found.tags.get(registry.COMPARED_TAG) or None, table=registry.eval_table(eval_run_id),
        eval_run_id=eval_run_id, suite=suite, links=lineage.load(eval_run_id), reused=True,
    )


@dataclass(frozen=True)
class ChampionScores:
    """The champion to compare with, scored on the current suite (table and per-item results), and how that score was obtained."""

    version: str
    table: MetricTable
    items: ItemResults
    note: str


def stored_items(eval_run_id: str) -> ItemResults | None:
    """The per-item results an evals run logged; None for a run from before they were stored."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if not any(a.path == PER_ITEM for a in MlflowClient().list_artifacts(eval_run_id)):
        return None
    return item_results_from_dict(mlflow.artifacts.load_dict(f"runs:/{eval_run_id}/{PER_ITEM}"))


@task(name="resolve-candidate", cache_policy=NO_CACHE)
def resolve_candidate(
    ws: Workspace, trained: TrainedModel | None, model_dir: str | None, training_run_id: str | None
) -> Candidate:
    """The ``trained`` model, else ``model_dir`` as given, else the latest train artifact's model and
    the MLflow run that logged it."""
    store = ws.store()
    if trained is not None:
        return Candidate(trained.model_dir(store), trained.mlflow_run_id, trained.ref)
    if model_dir is not None:
        path = Path(model_dir).resolve()
        if not path.is_dir():
            raise ValueError(f"model dir {path} does not exist: pass a Hugging Face checkpoint directory")
        # A path a person passed may still lie inside an artifact; its manifests then give the lineage.
        inside = containing(store, str(path))
        return Candidate(path, training_run_id, inside.ref if inside else None)
    artifact = store.latest(TRAIN_STAGE)
    if artifact is None:
        raise ValueError(f"no trained model under {ws.artifacts / TRAIN_STAGE}: run `ladder train` or pass a model dir")
    if training_run_id is None:
        training_run_id = producing_run(ws, artifact.version).get("mlflow_run")
    return Candidate(artifact.path / TRAIN_MODEL_DIR, training_run_id, artifact.ref)


@task(name="score-champion", cache_policy=NO_CACHE)
def score_champion(name: str, version: str | None, suite: Suite, cfg: RunConfig) -> ChampionScores | None:
    """Champion ``version``'s eval table and per-item results on this suite: the stored ones, or a fresh evaluation.

    None when there is no champion (``version`` None).

    Comparing numbers from two different suites (another dataset version, other items) would
    judge the items rather than the models, so an outdated champion is scored again; so is one
    judged before per-item results were stored, since the gate pairs items.
    """
    from mlflow.tracking import MlflowClient

    if version is None:
        return None
    champion = registry.read_champion(name, version)
    if champion.suite_version == suite.version:
        # The version's run is the evaluation that logged its model (as registry.read_champion reads its table).
        items = stored_items(MlflowClient().get_model_version(name, champion.version).run_id)
        if items is not None:
            return ChampionScores(champion.version, champion.table, items, f"version {champion.version}, scores from its own evaluation")
        why = "its evaluation stored no per-item results"
    else:
        why = f"it was evaluated on suite {champion.suite_version}"
    with tempfile.TemporaryDirectory(prefix="ladder-champion-") as tmp:
        model_dir, tokenizer_dir = registry.download(name, champion.version, Path(tmp))
        evaluation = run_lm_eval(model_dir, suite, cfg, tokenizer_dir)
    note = f"version {champion.version}, re-scored on suite {suite.version} ({why})"
    return ChampionScores(champion.version, evaluation.table, evaluation.per_item, note)


def _requirements() -> list[str]:
    # Explicit, so MLflow need not import-trace a subprocess to infer them.
    import torch
    import transformers

    return [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]


@task(name="log-evaluation", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def log_evaluation(
    ws: Workspace,
    cfg: EvalConfig,
    suite: Suite,
    evaluation: Evaluation,
    candidate: Candidate,
    dataset_md5: str,
) -> tuple[str, str]:
    """One MLflow run (stage ``evals``) under the training run: results, samples, table, suite, model.

    Returns ``(run id, logged model URI)``; the model is logged in MLflow's transformers
    flavor so that the registry's versions load with ``mlflow.transformers.load_model``.
    """
    import mlflow
    import pandas as pd
    from lm_eval.utils import handle_non_serializable
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tags = {DATASET: dataset_md5, SUITE_TAG: suite.version, MODEL_DIR: str(candidate.model_dir)}
    if candidate.training_run_id:
        # mlflow.parentRunId nests the eval run under the training run in the MLflow UI.
        tags.update({"mlflow.parentRunId": candidate.training_run_id, TRAINING_RUN: candidate.training_run_id})
    with stage_run(ws, STAGE, cfg, suite.artifact, tags=tags) as run:
        metrics = {}
        for name, metric in evaluation.table.items():
            metrics[name] = metric.value
            if metric.stderr is not None:
                metrics[f"{name}_stderr"] = metric.stderr
        metrics.update({"eval_items": evaluation.items, "eval_seconds": evaluation.seconds,
                        "eval_items_per_second": evaluation.items_per_second})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(table_to_dict(evaluation.table), registry.METRICS_ARTIFACT)
        mlflow.log_dict(item_results_to_dict(evaluation.per_item), PER_ITEM)
        mlflow.log_text(json.dumps(evaluation.results, indent=2, default=handle_non_serializable), "lm_eval/results.json")
        for task_name, samples in evaluation.samples.items():
            lines = "".join(json.dumps(s, default=handle_non_serializable) + "\n" for s in samples)
            mlflow.log_text(lines, f"lm_eval/samples/{task_name}.jsonl")
        mlflow.log_artifacts(str(suite.include_path), "suite/lm_eval_tasks")
        mlflow.log_artifacts(str(suite.path / ITEMS_DIR), f"suite/{ITEMS_DIR}")
        for name in (SUITE_JSON, DROPPED):
            mlflow.log_artifact(str(suite.path / name), "suite")
        items = pd.DataFrame(
            [{"task": task_name, "doc_hash": s["doc_hash"], "target_hash": s["target_hash"]}
             for task_name, samples in sorted(evaluation.samples.items()) for s in samples]
        )
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path is ambiguous between them.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_pandas(items, source=str(suite.path), name="ladder-eval-suite", digest=suite.version)
        mlflow.log_input(dataset, context="evaluation")
        model = AutoModelForCausalLM.from_pretrained(candidate.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(candidate.model_dir)
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=registry.MODEL_ARTIFACT,
            task="text-generation",
            pip_requirements=_requirements(),
        )
        return run.info.run_id, info.model_uri


@task(name="collect-lineage", cache_policy=NO_CACHE)
def collect_lineage(
    ws: Workspace,
    candidate: Candidate,
    eval_run_id: str,
    suite: Suite,
    scaling_gate: ScalingGate | None,
    extra: dict[str, ArtifactRef] | None,
) -> dict[str, Any]:
    """The model's chain (see :mod:`tasks.evals.lineage`), logged once as ``lineage.json`` in the eval run."""
    tree = lineage.collect(ws, candidate, eval_run_id, suite.artifact, scaling_gate, extra)
    lineage.log(eval_run_id, tree)
    return tree


@task(name="register-candidate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def register(
    cfg: EvalConfig, model_uri: str, links: dict[str, Any], suite: Suite, eval_run_id: str, scaling_gate: ScalingGate | None
) -> str:
    """A new version of ``cfg.registered_model`` with alias ``challenger``, tagged with its lineage; returns the version number.

    The scaling-law gate's outcome under the policy is tagged too (``registry.scaling_tags``).
    """
    tags = {**lineage.to_tags(links), SUITE_TAG: suite.version, EVAL_RUN: eval_run_id}
    if scaling_gate is not None:
        tags.update(registry.scaling_tags(scaling_gate))
    return str(registry.register_candidate(cfg.registered_model, model_uri, tags).version)


@task(name="publish-gate-report", cache_policy=NO_CACHE)
def publish_report(
    eval_run_id: str,
    decision: Decision,
    facts: dict[str, str],
    table: MetricTable,
    cfg: EvalConfig,
    champion: ChampionScores | None,
    base: Scores | None,
) -> str:
    """The gate report as Markdown: logged to the eval run, shown as Prefect artifacts. Returns its MLflow URI."""
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    outcome = registry.PROMOTED if decision.passed else registry.REJECTED
    markdown = report_markdown(
        decision, outcome, facts, table, cfg.gate, champion.table if champion else None, base.table if base else None
    )
    client = MlflowClient()
    client.log_text(eval_run_id, markdown, GATE_REPORT)
    client.log_dict(eval_run_id, decision.to_dict(), "gate_decision.json")
    shown = markdown
    if decision.comparisons:
        with tempfile.TemporaryDirectory() as tmp:
            png = write_png(comparisons_figure(decision.comparisons), Path(tmp) / GATE_PLOT)
            client.log_artifact(eval_run_id, str(png))
            shown += "\n\n## Paired differences\n\n" + png_markdown(png)
    client.set_tag(eval_run_id, registry.DECISION_TAG, outcome)
    create_markdown_artifact(key="eval-gate-report", markdown=shown, description=f"Release gate: {outcome}")
    create_table_artifact(
        key="eval-metrics",
        table=[{"metric": name, "value": m.value, "stderr": m.stderr, "better": "higher" if m.higher_is_better else "lower"}
               for name, m in table.items()],
        description="Eval table of the candidate (lm-eval-harness on the held-out suite)",
    )
    return f"runs:/{eval_run_id}/{GATE_REPORT}"


@dataclass(frozen=True)
class Judgement:
    """The gate's decision on a candidate against one champion (None: no champion yet), with its published report."""

    champion: ChampionScores | None
    decision: Decision
    report_uri: str


def judge_against(
    champion: str | None, *, cfg: EvalConfig, suite: Suite, table: MetricTable, base: Scores | None,
    scaling_gate: ScalingGate | None, eval_run_id: str, facts: dict[str, str],
    task_predictions: TaskPredictions | None = None,
) -> Judgement:
    """Score champion version ``champion`` on the suite, apply the release gate to ``table``, publish the report.

    The candidate's per-item results are read back from its eval run: the gate judges what is stored.
    """
    scores = score_champion(cfg.registered_model, champion, suite, cfg.run)
    items = stored_items(eval_run_id)
    if items is None:
        raise ValueError(f"eval run {eval_run_id} holds no {PER_ITEM}: log the evaluation (log_evaluation) before judging it")
    decision = gate(
        Scores(table, items), cfg.gate, Scores(scores.table, scores.items) if scores else None, base, scaling_gate,
        task_predictions.checks(table) if task_predictions else (),
    )
    shown = {**facts, "compared with": scores.note if scores else "no champion yet"}
    return Judgement(scores, decision, publish_report(eval_run_id, decision, shown, table, cfg, scores, base))


@task(name="judge-and-record", cache_policy=NO_CACHE)
def judge_and_record(
    name: str, version: str, inputs: str, judge: Callable[[str | None], Judgement]
) -> tuple[Judgement, str]:
    """Judge ``version`` against the current champion and record the decision, as a compare-and-set.

    ``judge(champion_version)`` gives the decision against that champion (:func:`judge_against`).
    It is recorded only if the champion has not moved meanwhile (see
    ``registry.record_decision``); if another evaluation promoted a version in between, the
    candidate is judged again against that one, at most ``JUDGEMENTS`` times. Returns the
    recorded judgement and the alias the version holds.
    """
    champion = registry.alias_version(name, registry.CHAMPION)
    for _ in range(JUDGEMENTS):
        judgement = judge(champion)
        try:
            alias = registry.record_decision(name, version, judgement.decision, judgement.report_uri, inputs, champion)
        except registry.ChampionMoved as moved:
            champion = moved.champion
            continue
        return judgement, alias
    raise RuntimeError(
        f"{name} version {version} was judged {JUDGEMENTS} times, and each time another evaluation moved the "
        f"champion before its decision was recorded: evaluate it again once the other evaluations are done"
    )
