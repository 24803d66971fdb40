"""Registry roles on a real MLflow store (SQLite, as flows use it without a server): challenger, champion, manual promotion."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ladder.cli import app
from tasks.evals import registry
from tasks.evals.gate import Check, Decision
from tasks.evals.runner import Metric, table_to_dict

NAME = "ladder-unit"
PASSED = Decision(True, [Check("floor", "ppl/bits_per_byte", True, "2.0 must be <= 3")])
REJECTED = Decision(False, [Check("regression", "ppl/bits_per_byte", False, "worse by +0.5000")])


@pytest.fixture
def store(mlflow_store: Path) -> str:
    return MlflowClient().create_experiment("unit", artifact_location=(mlflow_store / "artifacts").as_uri())


def _candidate(experiment: str, bpb: float) -> str:
    """A registered version whose run holds a (stand-in) model and an eval table."""
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("stand-in", "model/MLmodel")
        mlflow.log_dict(table_to_dict({"ppl/bits_per_byte": Metric(bpb, 0.01, False, 10)}), registry.METRICS_ARTIFACT)
    return str(registry.register_candidate(NAME, f"runs:/{run.info.run_id}/model", {registry.SUITE_TAG: "s1"}).version)


def test_a_passing_candidate_takes_champion_and_a_failing_one_stays_challenger(store: str) -> None:
    assert registry.current_champion(NAME) is None
    first = _candidate(store, 2.0)
    assert registry.alias_version(NAME, registry.CHALLENGER) == first
    assert registry.record_decision(NAME, first, PASSED, "runs:/x/gate_report.md") == registry.CHAMPION
    assert registry.aliases_of(NAME, first) == [registry.CHAMPION]

    second = _candidate(store, 2.5)
    assert registry.record_decision(NAME, second, REJECTED, "runs:/y/gate_report.md") == registry.CHALLENGER
    champion = registry.current_champion(NAME)
    assert (champion.version, champion.suite_version) == (first, "s1")
    assert champion.table["ppl/bits_per_byte"].value == 2.0
    rejected = registry.resolve(f"{NAME}@{registry.CHALLENGER}")
    assert rejected.tags[registry.DECISION_TAG] == registry.REJECTED
    assert registry.reasons(rejected) == ["FAIL regression ppl/bits_per_byte: worse by +0.5000"]


def test_manual_promotion_needs_a_reason_and_an_explicit_override_for_a_rejected_version(store: str) -> None:
    first, second = _candidate(store, 2.0), _candidate(store, 2.5)
    registry.record_decision(NAME, first, PASSED, "r1")
    registry.record_decision(NAME, second, REJECTED, "r2")
    with pytest.raises(ValueError, match="needs a reason"):
        registry.promote_manually(NAME, second, "  ")
    with pytest.raises(ValueError, match="--override-gate"):
        registry.promote_manually(NAME, second, "the lead accepts the regression")
    cli = CliRunner().invoke(app, ["promote", f"{NAME}/{second}", "--reason", "the lead accepts the regression"])
    assert cli.exit_code == 1 and "--override-gate" in cli.output

    cli = CliRunner().invoke(app, ["promote", f"{NAME}/{second}", "--reason", "the lead accepts the regression", "--override-gate"])
    assert cli.exit_code == 0, cli.output
    champion = registry.resolve(f"{NAME}@{registry.CHAMPION}")
    assert str(champion.version) == second
    assert champion.tags["ladder.promotion"] == "manual"
    assert champion.tags["ladder.promotion.reason"] == "the lead accepts the regression"
    assert champion.tags["ladder.promotion.override_gate"] == "true"
    assert registry.resolve(f"{NAME}/{first}").tags[registry.SUPERSEDED_TAG] == second
    assert registry.alias_version(NAME, registry.CHALLENGER) is None
    # a rollback to the earlier champion needs only a reason
    registry.promote_manually(NAME, first, "roll back")
    assert registry.alias_version(NAME, registry.CHAMPION) == first


def test_references_that_name_no_version_are_refused(store: str) -> None:
    _candidate(store, 2.0)
    assert str(registry.resolve(f"{NAME}/1").version) == "1"
    for ref in (NAME, f"{NAME}@nosuchalias", "nosuchmodel@champion"):
        with pytest.raises(ValueError, match=ref.split("@")[0]):
            registry.resolve(ref)
