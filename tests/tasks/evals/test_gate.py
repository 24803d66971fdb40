"""The release gate's rules: floors in each metric's direction, stderr-aware regression, alignment tax, scaling gate."""

from __future__ import annotations

import pytest

from tasks.evals.config import GatePolicy
from tasks.evals.gate import (
    ADVISORY,
    ALIGNMENT_TAX,
    FAILED,
    FLOOR,
    OVERRIDDEN,
    PASSED,
    REGRESSION,
    SCALING,
    ScalingGate,
    judge,
    report_markdown,
    scaling_outcome,
)
from tasks.evals.runner import Metric

POLICY = GatePolicy(
    floors={"ppl/bits_per_byte": 3.0, "cloze/acc": 0.3},
    regression_margins={"ppl/bits_per_byte": 0.02, "cloze/acc": 0.01},
    z=2.0,
    alignment_tax={"cloze/acc": 0.05},
)
ADVISORY_POLICY = POLICY.model_copy(update={"scaling_gate": "advisory"})
MISSED = ScalingGate(FAILED, ["actual loss 3.1 is outside the interval"], prediction={"loss": 2.8}).to_dict()


def table(bpb: float, acc: float, bpb_se: float = 0.001, acc_se: float = 0.01) -> dict[str, Metric]:
    return {"ppl/bits_per_byte": Metric(bpb, bpb_se, False, 50), "cloze/acc": Metric(acc, acc_se, True, 200)}


def failed(decision) -> set[tuple[str, str | None]]:
    return {(c.rule, c.metric) for c in decision.checks if not c.passed}


def test_first_candidate_faces_the_floors_only_in_each_metric_direction() -> None:
    assert judge(table(2.9, 0.31), POLICY).passed
    decision = judge(table(3.1, 0.29), POLICY)
    assert not decision.passed
    assert failed(decision) == {(FLOOR, "ppl/bits_per_byte"), (FLOOR, "cloze/acc")}
    assert any("no champion yet" in reason for reason in decision.reasons)
    assert decision.reasons[0].startswith("FAIL floor")  # failures first


def test_a_regression_beyond_the_noise_fails_and_one_within_it_passes() -> None:
    champion = table(2.0, 0.60)
    # bits per byte: 0.03 worse, stderr tiny, so the 0.02 margin decides.
    assert failed(judge(table(2.03, 0.60), POLICY, champion)) == {(REGRESSION, "ppl/bits_per_byte")}
    # accuracy: 0.04 worse, but 2 x sqrt(0.02^2 + 0.02^2) = 0.057 of noise allows it.
    assert judge(table(2.0, 0.56, acc_se=0.02), POLICY, {**champion, "cloze/acc": Metric(0.60, 0.02, True, 200)}).passed
    # the same drop measured precisely is a regression.
    precise = judge(table(2.0, 0.56, acc_se=0.001), POLICY, {**champion, "cloze/acc": Metric(0.60, 0.001, True, 200)})
    assert failed(precise) == {(REGRESSION, "cloze/acc")}
    assert precise.reasons[0].startswith("FAIL regression cloze/acc: candidate 0.5600 vs champion 0.6000: worse by +0.0400")
    # better than the champion is never a regression.
    assert judge(table(1.5, 0.9), POLICY, champion).passed


def test_alignment_tax_bound() -> None:
    base = table(2.0, 0.60)
    assert failed(judge(table(2.0, 0.50), POLICY, base=base)) == {(ALIGNMENT_TAX, "cloze/acc")}
    assert judge(table(2.0, 0.57), POLICY, base=base).passed


def _scaling(decision) -> str:
    (line,) = [reason for reason in decision.reasons if f" {SCALING}: " in reason]
    return line


def test_scaling_gate_outcomes_are_reported_as_what_they_are() -> None:
    # a miss under a required policy fails the check
    required = judge(table(2.0, 0.6), POLICY, scaling_gate=MISSED)
    assert failed(required) == {(SCALING, None)}
    assert _scaling(required).startswith("FAIL scaling_prediction: failed: actual loss 3.1")
    # an override lets it through, reported as overridden with its reason, not as a pass
    let_through = {**MISSED, "status": OVERRIDDEN, "override_reason": "approved by the lead"}
    overridden = judge(table(2.0, 0.6), POLICY, scaling_gate=let_through)
    assert overridden.passed
    assert _scaling(overridden).startswith("OVERRIDDEN scaling_prediction: missed its prediction, overridden (approved by the lead)")
    # an advisory policy reports the miss as advisory
    advisory = judge(table(2.0, 0.6), ADVISORY_POLICY, scaling_gate=MISSED)
    assert advisory.passed and _scaling(advisory).startswith("ADVISORY scaling_prediction")
    # the policy in force decides: a miss marked advisory fails under a required policy
    assert failed(judge(table(2.0, 0.6), POLICY, scaling_gate={**MISSED, "status": ADVISORY})) == {(SCALING, None)}
    assert _scaling(judge(table(2.0, 0.6), POLICY, scaling_gate={**MISSED, "status": PASSED})).startswith("PASS")
    markdown = report_markdown(overridden, "promoted", {}, table(2.0, 0.6), POLICY)
    assert "| ⚠️ overridden | scaling_prediction | — | missed its prediction, overridden (approved by the lead)" in markdown


def test_a_malformed_scaling_gate_is_refused() -> None:
    with pytest.raises(ValueError, match=r"missing \['status'\], unknown \['passed'\]"):
        judge(table(2.0, 0.6), POLICY, scaling_gate={"passed": False, "reasons": []})
    with pytest.raises(ValueError, match="not one of"):
        ScalingGate("skipped", [])
    with pytest.raises(ValueError, match="needs the reason it was overridden for"):
        ScalingGate(OVERRIDDEN, ["missed"])
    with pytest.raises(ValueError, match="only an overridden one has one"):
        ScalingGate(FAILED, ["missed"], override_reason="why not")


def _target(status: str, override_reason: str = "") -> dict:
    """What the scaling stage's target_gate returns."""
    return {"status": status, "passed": status == PASSED, "reasons": ["relative error +12.00% is beyond the tolerance"],
            "rel_error": 0.12, "actual": 3.1, "prediction": {"loss": 2.8, "low": 2.7, "high": 2.9},
            "override_reason": override_reason}


def test_the_pipeline_stops_only_at_a_miss_the_policy_requires_and_nobody_overrode() -> None:
    stopped = scaling_outcome(_target(FAILED), POLICY)
    assert (stopped.status, stopped.blocks) == (FAILED, True)
    advisory = scaling_outcome(_target(FAILED), ADVISORY_POLICY)
    assert (advisory.status, advisory.blocks) == (ADVISORY, False)
    for policy in (POLICY, ADVISORY_POLICY):
        overridden = scaling_outcome(_target(OVERRIDDEN, "known tokenizer change"), policy)
        assert (overridden.status, overridden.override_reason, overridden.blocks) == (OVERRIDDEN, "known tokenizer change", False)
        assert scaling_outcome(_target(PASSED), policy).status == PASSED
    # what evaluate receives: every field, the prediction included, and nothing else
    assert advisory.to_dict() == {"status": ADVISORY, "reasons": ["relative error +12.00% is beyond the tolerance"],
                                  "override_reason": "", "prediction": {"loss": 2.8, "low": 2.7, "high": 2.9}}
    assert ScalingGate.from_dict(advisory.to_dict()) == advisory


def test_report_names_the_outcome_every_reason_and_the_policy() -> None:
    champion = table(2.0, 0.60)
    decision = judge(table(2.5, 0.61), POLICY, champion)
    markdown = report_markdown(decision, "rejected", {"candidate": "ladder-tiny version 2"}, table(2.5, 0.61), POLICY, champion)
    assert markdown.startswith("# Release gate: REJECTED")
    assert "ladder-tiny version 2" in markdown
    for check in decision.checks:
        assert check.detail in markdown
    assert "| ppl/bits_per_byte | 2.5000 ± 0.0010 | 2.0000 ± 0.0010 | lower |" in markdown
    assert "regression_margins:" in markdown


def test_policy_margins_are_amounts_of_worsening() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        GatePolicy(regression_margins={"cloze/acc": -0.1})
