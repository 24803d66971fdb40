"""Registry roles on a real MLflow store (SQLite, as flows use it without a server): challenger, champion, manual promotion.

Also what a decision is keyed on (the champion included), recorded only while the champion is
the one it was judged against, and the scaling-law gate's outcome as searchable tags.
"""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from app.cli import app
from decisions import PASSED, REJECTED
from ladder import tags
from tasks.evals import registry
from tasks.evals.config import GatePolicy
from tasks.evals.gate import ADVISORY, FAILED, OVERRIDDEN, scaling_outcome
from tasks.evals.runner import Metric, table_to_dict
from tasks.evals.stage import Judgement, judge_and_record

NAME = "ladder-unit"



def _candidate(experiment: str, bpb: float) -> str:
    """A registered version whose run holds a (stand-in) model and an eval table."""
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("stand-in", "model/MLmodel")
        mlflow.log_dict(table_to_dict({"ppl/bits_per_byte": Metric(bpb, 0.01, False, 10)}), registry.METRICS_ARTIFACT)
    return str(registry.register_candidate(NAME, f"runs:/{run.info.run_id}/model", {registry.SUITE_TAG: "s1"}).version)


def test_a_passing_candidate_takes_champion_and_a_failing_one_stays_challenger(experiment: str) -> None:
    assert registry.alias_version(NAME, registry.CHAMPION) is None
    first = _candidate(experiment, 2.0)
    assert registry.alias_version(NAME, registry.CHALLENGER) == first
    assert registry.record_decision(NAME, first, PASSED, "runs:/x/gate_report.md", "k1", None) == registry.CHAMPION
    assert registry.aliases_of(NAME, first) == [registry.CHAMPION]

    second = _candidate(experiment, 2.5)
    assert registry.record_decision(NAME, second, REJECTED, "runs:/y/gate_report.md", "k2", first) == registry.CHALLENGER
    champion = registry.read_champion(NAME, first)
    assert (champion.version, champion.suite_version) == (first, "s1")
    assert champion.table["ppl/bits_per_byte"].value == 2.0
    rejected = registry.resolve(f"{NAME}@{registry.CHALLENGER}")
    assert rejected.tags[registry.DECISION_TAG] == registry.REJECTED
    assert registry.reasons(rejected) == ["FAIL regression ppl/bits_per_byte: worse by +0.5000"]


def test_manual_promotion_needs_a_reason_and_an_explicit_override_for_a_rejected_version(experiment: str) -> None:
    first, second = _candidate(experiment, 2.0), _candidate(experiment, 2.5)
    registry.record_decision(NAME, first, PASSED, "r1", "k1", None)
    registry.record_decision(NAME, second, REJECTED, "r2", "k2", first)
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


def test_references_that_name_no_version_are_refused(experiment: str) -> None:
    _candidate(experiment, 2.0)
    assert str(registry.resolve(f"{NAME}/1").version) == "1"
    for ref in (NAME, f"{NAME}@nosuchalias", "nosuchmodel@champion"):
        with pytest.raises(ValueError, match=ref.split("@")[0]):
            registry.resolve(ref)


def test_a_decision_judged_against_a_champion_that_moved_is_not_recorded(experiment: str) -> None:
    first, second = _candidate(experiment, 2.0), _candidate(experiment, 1.9)
    registry.record_decision(NAME, first, PASSED, "r1", "k1", None)
    with pytest.raises(registry.ChampionMoved, match="moved from None to 1") as moved:
        registry.record_decision(NAME, second, PASSED, "r2", "k2", None)
    assert moved.value.champion == first
    assert registry.alias_version(NAME, registry.CHAMPION) == first
    assert registry.DECISION_TAG not in registry.resolve(f"{NAME}/{second}").tags
    # no lock is left behind: the registry holds the one model
    assert [m.name for m in MlflowClient().search_registered_models()] == [NAME]


def _judge(passed: bool, calls: list[str | None]):
    """A stand-in for judge_against: the same verdict against any champion, each champion it was asked about noted."""
    def judge(champion: str | None) -> Judgement:
        calls.append(champion)
        return Judgement(None, PASSED if passed else REJECTED, f"runs:/x/report-{len(calls)}.md")
    return judge


@pytest.mark.parametrize("demote", ["roll back to an earlier version", "delete the champion alias"])
def test_a_candidate_rejected_against_a_champion_is_judged_again_once_that_champion_is_demoted(experiment: str, demote: str) -> None:
    earlier, champion, candidate = _candidate(experiment, 2.1), _candidate(experiment, 2.0), _candidate(experiment, 2.5)
    judge_and_record.fn(NAME, earlier, "inputs-0", _judge(True, []))
    judge_and_record.fn(NAME, champion, "inputs-1", _judge(True, []))
    # the champion asked about again is itself: not judged again against itself
    assert str(registry.decided_version(NAME, "inputs-1").version) == champion
    # nor is a version promoted once and since replaced through the gate (a pipeline rerun)
    assert str(registry.decided_version(NAME, "inputs-0").version) == earlier
    calls: list[str | None] = []
    judgement, alias = judge_and_record.fn(NAME, candidate, "inputs-2", _judge(False, calls))
    assert (calls, alias, judgement.decision.passed) == ([champion], registry.CHALLENGER, False)
    tags = registry.resolve(f"{NAME}/{candidate}").tags
    assert (tags[registry.KEY_TAG], tags[registry.COMPARED_TAG]) == (registry.judgement_key("inputs-2", champion), champion)
    # asked again while that champion serves: the same judgement, reused
    assert str(registry.decided_version(NAME, "inputs-2").version) == candidate

    if demote == "delete the champion alias":
        MlflowClient().delete_registered_model_alias(NAME, registry.CHAMPION)
    else:
        registry.promote_manually(NAME, earlier, "version 2 misbehaves in production")
    # the champion it lost to is gone: a new question, judged afresh against whoever serves now
    assert registry.decided_version(NAME, "inputs-2") is None
    serving = registry.alias_version(NAME, registry.CHAMPION)
    again, calls = _candidate(experiment, 2.5), []
    judge_and_record.fn(NAME, again, "inputs-2", _judge(True, calls))
    assert calls == [serving]
    assert registry.alias_version(NAME, registry.CHAMPION) == again
    assert registry.resolve(f"{NAME}/{again}").tags[registry.COMPARED_TAG] == (serving or "")
    assert str(registry.decided_version(NAME, "inputs-2").version) == again


def test_the_scaling_gate_outcome_is_a_searchable_tag_with_its_override_reason(experiment: str) -> None:
    policy, advisory = GatePolicy(), GatePolicy(scaling_gate="advisory")
    target = {"status": FAILED, "passed": False, "reasons": ["beyond the tolerance"], "rel_error": 0.2, "actual": 3.3,
              "prediction": {"loss": 2.75}, "override_reason": ""}
    overridden = scaling_outcome({**target, "status": OVERRIDDEN, "override_reason": "known tokenizer change"}, policy)
    assert registry.scaling_tags(overridden) == {
        tags.SCALING_GATE: OVERRIDDEN, tags.SCALING_OVERRIDE: "known tokenizer change"}
    assert registry.scaling_tags(scaling_outcome(target, advisory)) == {tags.SCALING_GATE: ADVISORY}
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("stand-in", "model/MLmodel")
    registry.register_candidate(NAME, f"runs:/{run.info.run_id}/model", registry.scaling_tags(overridden))
    found = MlflowClient().search_model_versions(f"name = '{NAME}' and tags.`{tags.SCALING_GATE}` = '{OVERRIDDEN}'")
    assert [v.tags[tags.SCALING_OVERRIDE] for v in found] == ["known tokenizer change"]
