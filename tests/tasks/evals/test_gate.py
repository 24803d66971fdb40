"""The release gate's rules: floors in each metric's direction, stderr-aware regression, alignment tax, scaling gate."""

from __future__ import annotations

import pytest

from tasks.evals.config import GatePolicy
from tasks.evals.gate import ALIGNMENT_TAX, FLOOR, REGRESSION, SCALING, judge, report_markdown
from tasks.evals.runner import Metric

POLICY = GatePolicy(
    floors={"ppl/bits_per_byte": 3.0, "cloze/acc": 0.3},
    regression_margins={"ppl/bits_per_byte": 0.02, "cloze/acc": 0.01},
    z=2.0,
    alignment_tax={"cloze/acc": 0.05},
)


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


def test_alignment_tax_bound_and_scaling_gate() -> None:
    base = table(2.0, 0.60)
    assert failed(judge(table(2.0, 0.50), POLICY, base=base)) == {(ALIGNMENT_TAX, "cloze/acc")}
    assert judge(table(2.0, 0.57), POLICY, base=base).passed
    missed = {"passed": False, "reasons": ["actual loss 3.1 is outside the interval"]}
    assert failed(judge(table(2.0, 0.6), POLICY, scaling_gate=missed)) == {(SCALING, None)}
    advisory = POLICY.model_copy(update={"scaling_gate": "advisory"})
    assert judge(table(2.0, 0.6), advisory, scaling_gate=missed).passed
    assert judge(table(2.0, 0.6), POLICY, scaling_gate={**missed, "override": "approved by the lead"}).passed
    with pytest.raises(ValueError, match="'passed'"):
        judge(table(2.0, 0.6), POLICY, scaling_gate={"reasons": []})


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
