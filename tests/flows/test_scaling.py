"""The scaling flow end to end on synthetic packed shards: rungs as child runs, fit, prediction, cache.

Real components throughout: Prefect (test harness), MLflow (SQLite store), training processes
(two rungs side by side), the scaling-law fit, the eval suite of a small curated dataset and
lm-eval scoring the rungs on it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.scaling import scaling_flow
from ladder.tags import ARTIFACT_VERSION, INPUT_PREFIX
from ladder.tracking import experiment_id
from ladder.workspace import Workspace
from tasks.data.dataset import dvc_dir_md5
from tasks.evals.suite import STAGE as SUITE_STAGE, Suite
from tasks.evals.runner import Metric
from tasks.scaling.stage import FIDELITY, FIT, POINTS, SUMMARY, TASK_SCORES, record_task_scores
from tests.flows.tokenized import store_tokenized
from tests.tasks.evals.eval_corpus import write_curated
from tests.tasks.train.train_fixtures import write_shards, write_tokenizer

pytestmark = pytest.mark.slow

# The profile's four rungs (1e4 to 8e4 non-embedding parameters) on a tenth of their Chinchilla
# budgets, 8 sequences of 32 tokens a step: 79 to 625 steps a rung.
OVERRIDES = [
    "scaling.budget=0.1",
    "scaling.evals_per_rung=4",
    "scaling.fit.bootstrap_samples=10",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "train.precision=fp32",
    "train.max_tokens=320000",
    "evals.suite.items_per_task=24",
    "evals.suite.fewshot_pool=8",
    "evals.suite.ppl_docs_per_source=6",
    "scaling.task_scores.rung_items=16",
    "scaling.task_scores.bootstrap_samples=50",
]


def _runs(ws: Workspace, stage: str) -> list:
    return MlflowClient().search_runs([experiment_id(ws)], filter_string=f"tags.`ladder.stage` = '{stage}'")


def test_flow_trains_rungs_as_child_runs_fits_predicts_and_caches(
    prefect_harness: None, workspace: Workspace, tmp_path: Path
) -> None:
    # The dataset whose held-out splits the eval suite is built from; the shards stand for its tokens.
    write_curated(workspace.data, {"train": 160, "validation": 24, "test": 30})
    md5 = dvc_dir_md5(workspace.data)
    workspace.data_dvc.write_text(f"outs:\n- md5: {md5}\n  path: data\n")
    tokenized = store_tokenized(workspace, write_shards(tmp_path / "shards"), write_tokenizer(tmp_path / "tokenizer"), md5)
    kwargs = {"overrides": OVERRIDES, "tokenized": tokenized}
    first = scaling_flow(**kwargs)

    assert not first.cached
    assert set(first.fit) == {"E", "A", "B", "alpha", "beta"}
    assert all(math.isfinite(value) for value in first.fit.values())
    assert math.isfinite(first.self_check_rel_error)
    prediction = first.prediction
    assert 0 < prediction["low"] <= prediction["loss"] <= prediction["high"]
    assert [row["flops"] for row in first.compute_optimal] == [1e15, 1e17, 1e19]

    # The artifact's points: several evaluations of each of the four rungs, smallest model first.
    artifact = workspace.store().get(first.ladder)
    points = json.loads(artifact.file(POINTS).read_text())
    per_rung = Counter(p["rung"] for p in points)
    assert sorted(per_rung) == [0, 1, 2, 3] and min(per_rung.values()) >= 3
    sizes = [max(p["n_params"] for p in points if p["rung"] == rung) for rung in sorted(per_rung)]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 7

    # MLflow: each rung's training run hangs under the scaling run, which holds the fit.
    (scaling_run,) = _runs(workspace, "scaling")
    assert scaling_run.info.run_id == first.mlflow_run_id
    assert scaling_run.data.tags["ladder.data.md5"] == md5
    assert scaling_run.data.metrics["predicted_loss"] == pytest.approx(prediction["loss"])
    rungs = _runs(workspace, "train")
    assert len(rungs) == 4
    assert {run.data.tags["mlflow.parentRunId"] for run in rungs} == {scaling_run.info.run_id}

    # The fixture's train split (about 25k tokens) is too small for the ladder's budgets: the top
    # rungs and the target repeat it, and the ladder says so instead of counting every token as new.
    data = json.loads(artifact.file(FIT).read_text())["data"]
    assert data["max_epochs"] > 4 and data["form"].startswith("data-constrained")
    assert prediction["epochs"] > 4 and any("outside the law's validity" in limit for limit in prediction["limits"])
    assert scaling_run.data.metrics["target_epochs"] == pytest.approx(prediction["epochs"])
    assert "| target run |" in artifact.file(FIDELITY).read_text() and "epochs" in artifact.file(FIDELITY).read_text()

    # Every task of the eval suite has a predicted score with its interval and a self-check on the top rung,
    # in the result, the artifact and the scaling run, before any target trains.
    suite = Suite.from_artifact(workspace.store().latest(SUITE_STAGE))
    predicted = {p.task: p for p in first.task_predictions}
    assert set(predicted) == set(suite.tasks) | {"ladder_ppl"}
    assert {p.metric for p in predicted.values()} == {"acc_norm", "exact_match", "bits_per_byte"}
    for p in predicted.values():
        assert p.low <= p.high and p.rung_items <= 16 and math.isfinite(p.self_check.actual)
        assert scaling_run.data.metrics[f"task/{p.name}/predicted"] == pytest.approx(p.predicted)
    assert 0.25 <= predicted["ladder_next_line"].predicted <= 1 and predicted["ladder_ppl"].predicted > 0
    stored = json.loads(artifact.file(TASK_SCORES).read_text())
    assert len(stored["predictions"]) == len(predicted) and not stored["unpredicted"]
    assert "| ladder_next_line/acc_norm |" in artifact.file(SUMMARY).read_text()

    # After the target is evaluated: its table against the predictions, one task far off (the release gate
    # judges the same comparison); the actual scores join the scaling run.
    measured = {p.name: Metric(p.predicted, 0.01, p.higher_is_better, 64) for p in first.task_predictions}
    measured["ladder_ppl/bits_per_byte"] = Metric(predicted["ladder_ppl"].high + 1.0, 0.01, False, 24)
    lines = record_task_scores.fn(workspace, artifact, first.task_predictions, measured)
    assert len(lines) == len(predicted)
    assert [line.split(":")[0] for line in lines if "OUTSIDE" in line] == ["ladder_ppl/bits_per_byte"]
    assert MlflowClient().get_run(first.mlflow_run_id).data.metrics["task/ladder_ppl/bits_per_byte/actual"] == pytest.approx(
        measured["ladder_ppl/bits_per_byte"].value)

    # Prefect: the fit and its plots are a markdown artifact.
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["scaling-summary"])))
    assert reports and "data:image/png;base64," in reports[0].data

    # An unchanged rerun is a cache hit: nothing trained or fitted again.
    again = scaling_flow(**kwargs)
    assert again.cached and again.ladder == first.ladder
    assert again.prediction == prediction and again.task_predictions == first.task_predictions
    assert (len(_runs(workspace, "scaling")), len(_runs(workspace, "train"))) == (1, 4)


def test_flow_with_decay_branches_fits_several_points_a_rung(prefect_harness: None, workspace: Workspace, tmp_path: Path) -> None:
    tokenized = store_tokenized(workspace, write_shards(tmp_path / "shards"), write_tokenizer(tmp_path / "tokenizer"), "md5")
    overrides = [
        "scaling.design=branches", "scaling.branch_shares=[0.5,1.0]", "scaling.budget=0.05", "scaling.task_scores.enabled=false", "scaling.fit.bootstrap_samples=10",
        "train.global_batch_size=8", "train.micro_batch_size=8", "train.precision=fp32", "train.max_tokens=320000",
    ]
    result = scaling_flow(overrides=overrides, tokenized=tokenized)

    assert math.isfinite(result.self_check_rel_error) and all(math.isfinite(value) for value in result.fit.values())
    artifact = workspace.store().get(result.ladder)
    points = json.loads(artifact.file(POINTS).read_text())
    # Each rung: its stable run and a branch of half its length, each a point at its own end, shortest first.
    assert Counter(p["rung"] for p in points) == {0: 2, 1: 2, 2: 2, 3: 2}
    for rung in range(4):
        tokens = [p["n_tokens"] for p in points if p["rung"] == rung]
        assert tokens == sorted(set(tokens)) and tokens[-1] / tokens[0] >= 1.9
    # Each branch is a train artifact of its own, a child run of the scaling run that names its stable run.
    trained = _runs(workspace, "train")
    assert len(trained) == 8
    named = INPUT_PREFIX + "stable_run"
    stable = {run.data.tags[ARTIFACT_VERSION] for run in trained if named not in run.data.tags}
    assert len(stable) == 4
    assert Counter(run.data.tags[named] for run in trained if named in run.data.tags) == {version: 1 for version in stable}
    # A branch trained only its decay: it resumed from the copy of its stable run's checkpoint.
    for run in trained:
        result = json.loads(workspace.store().lookup("train", run.data.tags[ARTIFACT_VERSION]).file("result.json").read_text())
        assert (result["resumed_from"] is not None) == (named in run.data.tags)
