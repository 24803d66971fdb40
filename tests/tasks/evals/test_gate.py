"""The release gate's rules: floors in each metric's direction, paired regression and power, alignment tax, scaling gate."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prefect.exceptions import ParameterTypeError

from flows.evals import evals_flow
from tasks.evals.config import GatePolicy
from tasks.evals.gate import (
    ADVISORY,
    ALIGNMENT_TAX,
    FAILED,
    FLOOR,
    OVERRIDDEN,
    PASSED,
    POWER,
    REGRESSION,
    SCALING,
    TASK_PREDICTION,
    ScalingGate,
    comparisons_figure,
    judge,
    report_markdown,
    scaling_outcome,
)
from tasks.evals.runner import Metric, Scores
from tasks.evals.stage import TaskPredictions
from tasks.scaling.task_scores import SelfCheck, TaskPrediction
from tasks.evals.stats import ItemScores, ratio_metric

POLICY = GatePolicy(
    floors={"ppl/bits_per_byte": 3.0, "cloze/acc": 0.3},
    regression_margins={"ppl/bits_per_byte": 0.02, "cloze/acc": 0.02},
    alignment_tax={"cloze/acc": 0.05},
)
ADVISORY_POLICY = POLICY.model_copy(update={"scaling_gate": "advisory"})
MISSED = ScalingGate(FAILED, ["actual loss 3.1 is outside the interval"], prediction={"loss": 2.8})


DOC_BYTES = 1000.0


def scores(bpb: float | np.ndarray, acc: float | np.ndarray) -> Scores:
    """A model's table and per-item results: 50 documents' bits per byte (one value or one per document) and
    1000 items' accuracy (a rate, met by the first items, or one 0/1 score per item)."""
    per_doc = np.broadcast_to(np.asarray(bpb, dtype=float), (50,))
    loglikelihoods = tuple(-per_doc * math.log(2) * DOC_BYTES)
    correct = acc if isinstance(acc, np.ndarray) else (np.arange(1000) < round(acc * 1000)).astype(float)
    items = {
        "ppl/bits_per_byte": ItemScores("bits_per_byte", tuple(f"d{i}" for i in range(50)), loglikelihoods, (DOC_BYTES,) * 50),
        "cloze/acc": ItemScores("acc", tuple(f"q{i}" for i in range(1000)), tuple(correct)),
    }
    value, stderr = ratio_metric(list(zip(loglikelihoods, (DOC_BYTES,) * 50)), "bits_per_byte")
    table = {
        "ppl/bits_per_byte": Metric(value, stderr, False, 50),
        "cloze/acc": Metric(float(correct.mean()), float(correct.std(ddof=1) / math.sqrt(1000)), True, 1000),
    }
    return Scores(table, items)


def table(bpb: float, acc: float) -> dict[str, Metric]:
    return scores(bpb, acc).table


def failed(decision) -> set[tuple[str, str | None]]:
    return {(c.rule, c.metric) for c in decision.checks if not c.passed}


def test_first_candidate_faces_the_floors_only_in_each_metric_direction() -> None:
    assert judge(scores(2.9, 0.31), POLICY).passed
    decision = judge(scores(3.1, 0.29), POLICY)
    assert not decision.passed
    assert failed(decision) == {(FLOOR, "ppl/bits_per_byte"), (FLOOR, "cloze/acc")}
    assert any("no champion yet" in reason for reason in decision.reasons)
    assert decision.reasons[0].startswith("FAIL floor")  # failures first


def _unpaired_rule_passes(candidate: Metric, champion: Metric, margin: float, z: float = 2.0) -> bool:
    """The rule the gate had before it paired items: allow max(margin, z x combined stderr)."""
    allowance = max(margin, z * math.sqrt(candidate.stderr**2 + champion.stderr**2))
    return champion.value - candidate.value <= allowance if candidate.higher_is_better else candidate.value - champion.value <= allowance


def test_paired_items_catch_a_regression_the_unpaired_rule_let_through() -> None:
    champion = scores(2.0, 0.60)
    # 40 of the 600 items the champion gets right, the candidate gets wrong: 0.04 worse, twice the 0.02 margin.
    worse = scores(2.0, 0.56)
    assert _unpaired_rule_passes(worse.table["cloze/acc"], champion.table["cloze/acc"], 0.02)  # 0.04 < 2 x 0.022
    decision = judge(worse, POLICY, champion)
    assert failed(decision) == {(REGRESSION, "cloze/acc")}
    (line,) = [r for r in decision.reasons if r.startswith("FAIL")]
    assert line.startswith("FAIL regression cloze/acc: candidate 0.5600 vs champion 0.6000: worse by +0.0400, 95% interval [+0.0")
    assert line.endswith("over 1000 paired items: the whole interval is beyond margin 0.02")
    # bits per byte 0.03 worse on every document: a regression, however noisy the documents are between them.
    assert failed(judge(scores(2.03, 0.60), POLICY, champion)) == {(REGRESSION, "ppl/bits_per_byte")}
    # the champion itself, and a better candidate, pass with nothing to detect.
    same = judge(champion, POLICY, champion)
    assert same.passed and all(c.paired.high == 0 and c.detectable == 0 for c in same.comparisons)
    assert judge(scores(1.5, 0.9), POLICY, champion).passed


def test_a_difference_the_interval_cannot_rule_out_is_unresolved_and_the_power_check_says_what_would_resolve_it() -> None:
    rng = np.random.default_rng(0)
    champion_items = (rng.random(1000) < 0.6).astype(float)
    # The candidate disagrees with the champion on 300 items, 150 each way: no worse on average, but noisy.
    candidate_items = champion_items.copy()
    disagree = np.concatenate([rng.choice(np.flatnonzero(champion_items == v), 150, replace=False) for v in (0, 1)])
    candidate_items[disagree] = 1 - candidate_items[disagree]
    champion, candidate = scores(2.0, champion_items), scores(2.0, candidate_items)
    required = POLICY.model_copy(update={"regression_margins": {"cloze/acc": 0.02}, "underpowered": "fail"})
    decision = judge(candidate, required, champion)
    assert failed(decision) == {(REGRESSION, "cloze/acc"), (POWER, "cloze/acc")}
    (comparison,) = decision.comparisons
    assert comparison.outcome == "unresolved" and comparison.worse_low < 0.02 < comparison.worse_high
    assert comparison.detectable > 0.02 and comparison.items_needed > 1000
    power = next(r for r in decision.reasons if r.startswith("FAIL power"))
    assert f"with 1000 paired items exceeds margin 0.02: the suite is underpowered; about {comparison.items_needed} items" in power
    # Reported only, under the default policy, which does not require power.
    reported = judge(candidate, POLICY.model_copy(update={"regression_margins": {"cloze/acc": 0.02}}), champion)
    assert failed(reported) == {(REGRESSION, "cloze/acc")}
    assert any(r.startswith("ADVISORY power cloze/acc") for r in reported.reasons)


def test_alignment_tax_is_a_paired_difference_held_to_its_bound_by_the_interval() -> None:
    base = scores(2.0, 0.60)
    assert failed(judge(scores(2.0, 0.50), POLICY, base=base)) == {(ALIGNMENT_TAX, "cloze/acc")}
    # 30 items lost, none gained: tax +0.03, and the paired interval stays under the 0.05 bound.
    within = judge(scores(2.0, 0.57), POLICY, base=base)
    assert within.passed
    (tax,) = [c for c in within.comparisons if c.rule == ALIGNMENT_TAX and c.metric == "cloze/acc"]
    assert tax.worse == pytest.approx(0.03) and tax.worse_high < 0.05 and tax.reference == "base"
    # The same +0.03 tax, but from 165 items lost and 135 gained: the point is within the bound (the
    # rule before pairing passed it) while the interval cannot rule out a tax past it.
    rng = np.random.default_rng(1)
    base_items = (np.arange(1000) < 600).astype(float)
    aligned_items = base_items.copy()
    flipped = np.concatenate([rng.choice(np.flatnonzero(base_items == 1), 165, replace=False),
                              rng.choice(np.flatnonzero(base_items == 0), 135, replace=False)])
    aligned_items[flipped] = 1 - aligned_items[flipped]
    noisy = judge(scores(2.0, aligned_items), POLICY, base=base)
    assert failed(noisy) == {(ALIGNMENT_TAX, "cloze/acc")}
    (line,) = [r for r in noisy.reasons if r.startswith("FAIL")]
    assert line.startswith("FAIL alignment_tax cloze/acc: aligned 0.5700 vs base 0.6000: tax +0.0300, 95% interval [")
    assert "unresolved, the interval reaches past bound 0.05" in line


def _scaling(decision) -> str:
    (line,) = [reason for reason in decision.reasons if f" {SCALING}: " in reason]
    return line


def test_scaling_gate_outcomes_are_reported_as_what_they_are() -> None:
    # a miss under a required policy fails the check
    required = judge(scores(2.0, 0.6), POLICY, scaling_gate=MISSED)
    assert failed(required) == {(SCALING, None)}
    assert _scaling(required).startswith("FAIL scaling_prediction: failed: actual loss 3.1")
    # an override lets it through, reported as overridden with its reason, not as a pass
    let_through = replace(MISSED, status=OVERRIDDEN, override_reason="approved by the lead")
    overridden = judge(scores(2.0, 0.6), POLICY, scaling_gate=let_through)
    assert overridden.passed
    assert _scaling(overridden).startswith("OVERRIDDEN scaling_prediction: missed its prediction, overridden (approved by the lead)")
    # an advisory policy reports the miss as advisory
    advisory = judge(scores(2.0, 0.6), ADVISORY_POLICY, scaling_gate=MISSED)
    assert advisory.passed and _scaling(advisory).startswith("ADVISORY scaling_prediction")
    # the policy in force decides: a miss marked advisory fails under a required policy
    assert failed(judge(scores(2.0, 0.6), POLICY, scaling_gate=replace(MISSED, status=ADVISORY))) == {(SCALING, None)}
    assert _scaling(judge(scores(2.0, 0.6), POLICY, scaling_gate=replace(MISSED, status=PASSED))).startswith("PASS")
    markdown = report_markdown(overridden, "promoted", {}, table(2.0, 0.6), POLICY)
    assert "| ⚠️ overridden | scaling_prediction | — | missed its prediction, overridden (approved by the lead)" in markdown


def test_a_malformed_scaling_gate_is_refused() -> None:
    # what a deployment passes as JSON is checked by the evals flow before it runs
    with pytest.raises(ParameterTypeError, match="status"):
        evals_flow.validate_parameters({"scaling_gate": {"passed": False, "reasons": []}})
    with pytest.raises(ParameterTypeError, match="needs the reason it was overridden for"):
        evals_flow.validate_parameters({"scaling_gate": {"status": OVERRIDDEN, "reasons": []}})
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
    assert evals_flow.validate_parameters({"scaling_gate": advisory.to_dict()})["scaling_gate"] == advisory


def test_a_task_score_outside_its_predicted_interval_is_advisory_unless_required() -> None:
    check = SelfCheck(predicted=0.5, low=0.45, high=0.55, actual=0.52)
    predicted = TaskPrediction("cloze", "acc", 0.62, 0.58, 0.66, 0.9, True, 1.1, {}, 32, check)
    missed, met = scores(2.0, 0.40), scores(2.0, 0.61)
    advisory = judge(missed, POLICY, task_predictions=TaskPredictions([predicted]).checks(missed.table))
    assert advisory.passed
    (line,) = [r for r in advisory.reasons if TASK_PREDICTION in r]
    assert line.startswith(f"ADVISORY {TASK_PREDICTION} cloze/acc: predicted 0.620 [")
    assert "actual 0.400 (OUTSIDE)" in line
    required = judge(missed, POLICY, task_predictions=TaskPredictions([predicted], "required").checks(missed.table))
    assert failed(required) == {(TASK_PREDICTION, "cloze/acc")}
    # inside the interval widened by the measured score's own standard error: a pass under either mode
    inside = judge(met, POLICY, task_predictions=TaskPredictions([predicted], "required").checks(met.table))
    assert inside.passed and any(r.startswith(f"PASS {TASK_PREDICTION} cloze/acc") and "(inside)" in r for r in inside.reasons)


def test_report_names_the_outcome_every_reason_and_the_policy(tmp_path: Path) -> None:
    champion = scores(2.0, 0.60)
    decision = judge(scores(2.5, 0.61), POLICY, champion)
    markdown = report_markdown(decision, "rejected", {"candidate": "ladder-tiny version 2"}, table(2.5, 0.61), POLICY, champion.table)
    assert markdown.startswith("# Release gate: REJECTED")
    assert "ladder-tiny version 2" in markdown
    for check in decision.checks:
        assert check.detail in markdown
    assert "| ppl/bits_per_byte | 2.5000 ± 0.0000 | 2.0000 ± 0.0000 | lower |" in markdown
    assert "| regression | ppl/bits_per_byte | 2.5000 | champion 2.0000 | +0.5000 | [+0.5000, +0.5000] | 0.02 | 0.0000 | 50 | 50 | regression |" in markdown
    assert "regression_margins:" in markdown
    figure = comparisons_figure(decision.comparisons)
    assert [ax.get_title(loc="left") for ax in figure.axes] == [
        "regression cloze/acc vs champion: within (1000 paired items)",
        "regression ppl/bits_per_byte vs champion: regression (50 paired items)"]
    figure.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_policy_margins_are_amounts_of_worsening() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        GatePolicy(regression_margins={"cloze/acc": -0.1})
