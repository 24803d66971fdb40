"""The ladder's plan, its points, and the gate on the target run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ladder.artifacts import StageOutput
from ladder.config import build
from ladder.tracking import stage_run
from tasks.scaling.ladder import Point, ScalingConfig, rung_config, rung_points
from tasks.scaling.stage import CODE, STAGE, ScalingStageConfig, build_scaling, stored_fit, target_gate
from tasks.train.config import ScheduleConfig, TrainConfig
from tasks.train.schedule import decay_start, lr_at


@pytest.mark.parametrize(
    ("rungs", "message"),
    [([1e4, 2e4, 4e4], "at least 4"), ([1e4, 1.5e4, 2e4, 3e4], "8x"), ([1e4, 1.1e4, 4e4, 8e4], "geometric")],
)
def test_ladder_shape_is_checked(rungs, message):
    with pytest.raises(ValueError, match=message):
        build(ScalingConfig, {"rungs": rungs})


def test_an_override_needs_a_reason():
    with pytest.raises(ValueError, match="override_reason"):
        build(ScalingConfig, {"override_gate": True})


def test_a_rung_is_the_target_config_resized_and_evaluated_along_the_way():
    scaling = ScalingConfig(evals_per_rung=5)
    train = TrainConfig(global_batch_size=8, micro_batch_size=8)
    rung = rung_config(scaling, train, 2e4, seq_len=100)
    assert rung.target_params == 2e4
    assert rung.max_tokens == int(scaling.budget * 20 * 2e4)
    steps = rung.total_steps(100)
    assert steps == -(-rung.max_tokens // 800)
    assert rung.eval.every_steps == steps // 5 and rung.faults == []
    assert rung.optimizer == train.optimizer  # only size, budget and cadence change


def test_points_come_from_the_last_evaluation_of_each_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 10, "val_loss": 5.0}, {"step": 20, "val_loss": 4.0}, {"step": 20, "loss": 3.9},
        {"step": 30, "val_loss": 9.0}, {"rollback": True, "step": 20}, {"step": 30, "val_loss": 3.5},
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TrainConfig(global_batch_size=2, micro_batch_size=2)
    points = rung_points(0, cfg, metrics, seq_len=10, min_tokens=300)
    assert [(p.n_tokens, p.loss) for p in points] == [(400.0, 4.0), (600.0, 3.5)]


def _law_points() -> list[Point]:
    law = lambda n, d: 1.7 + 400 / n**0.34 + 410 / d**0.28  # noqa: E731 - Chinchilla's published law
    rng = np.random.default_rng(0)
    return [
        Point(rung, n, d, law(n, d) * (1 + 0.002 * rng.standard_normal()))
        for rung, n in enumerate([1e7, 2e7, 4e7, 8e7, 1.6e8])
        for d in np.geomspace(2e8, 4e9, 8)
    ]


def test_target_gate_fails_a_run_that_misses_its_prediction(workspace, prefect_harness):
    cfg = ScalingStageConfig(scaling=ScalingConfig(), train=TrainConfig())
    store = workspace.store()

    def build_it(out: Path) -> StageOutput:
        with stage_run(workspace, STAGE, cfg) as run:
            output = build_scaling(out, cfg, _law_points(), (3.2e8, 4e9))
            (out / "mlflow_run_id").write_text(run.info.run_id)
        return output

    artifact, _ = store.run_stage(STAGE, cfg, {"shards": "synthetic"}, build_it, code=CODE)
    assert abs(artifact.metrics["holdout_rel_error"]) < 0.01
    _, prediction, _ = stored_fit(artifact)
    assert prediction.low <= 1.7 + 400 / 3.2e8**0.34 + 410 / 4e9**0.28 <= prediction.high

    on_target = target_gate.fn(workspace, artifact, cfg.scaling, prediction.loss)
    missed = target_gate.fn(workspace, artifact, cfg.scaling, prediction.loss * 1.2)
    assert on_target["status"] == "passed"
    assert "| target run |" in on_target["fidelity"] and "| self-check: top rung from the others |" in on_target["fidelity"]
    assert missed["status"] == "failed" and "beyond the tolerance" in missed["reasons"][1]
    forgiven = ScalingConfig(override_gate=True, override_reason="known tokenizer change")
    overridden = target_gate.fn(workspace, artifact, forgiven, prediction.loss * 1.2)
    assert overridden["status"] == "overridden" and overridden["override_reason"] == "known tokenizer change"

    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_run(artifact.file("mlflow_run_id").read_text()).data.tags
    logged = {f.path for f in MlflowClient().list_artifacts(artifact.file("mlflow_run_id").read_text(), STAGE)}
    assert {f"{STAGE}/fidelity.md", f"{STAGE}/fidelity.json"} <= logged
    assert tags["ladder.gate.scaling"] == "overridden"
    assert tags["ladder.gate.scaling.override_reason"] == "known tokenizer change"


@pytest.mark.parametrize("decay_fraction", [0.1, 0.2, 1.0])
def test_a_shorter_wsd_run_follows_a_longer_one_up_to_its_decay_start(decay_fraction):
    # What decay branches rest on: a rung's one stable run holds every shorter branch's schedule up to its decay.
    cfg = ScheduleConfig(kind="wsd", warmup_steps=10, decay_fraction=decay_fraction)
    for total in (25, 50, 100, 200, 399):
        start = decay_start(total, cfg)
        assert [lr_at(s, total, 1.0, cfg) for s in range(1, start + 1)] == [lr_at(s, 400, 1.0, cfg) for s in range(1, start + 1)]
        assert lr_at(start + 1, total, 1.0, cfg) < 1.0 and decay_start(total + 1, cfg) >= start
