"""The release gate: a written policy applied to a candidate's eval table, with a reason for every check.

Checks, all of which must pass for promotion:

- **floors**: each named metric is no worse than its absolute bound;
- **regression** (only when there is a champion): candidate and champion are compared item
  by item on the same suite (:mod:`tasks.evals.stats`, paired bootstrap); a named metric
  passes when the worse end of its difference's interval stays within the margin. A
  difference whose interval lies beyond the margin is a regression; one whose interval
  straddles it is unresolved, and fails too: the suite could not rule it out;
- **power** (with the regression check): each named metric's minimum detectable effect at the
  policy's confidence and power, for this suite's items, is at most its margin; otherwise the
  suite is underpowered for the margin, and the check says how many items would do (failing
  or only reported, as the policy's ``underpowered`` says);
- **alignment tax** (only for an aligned model, given its base model's table): each named
  metric is no worse than the base model's by more than its bound;
- **scaling-law prediction** (when the scaling stage's decision is given): that decision,
  blocking or advisory as the policy says (see :class:`ScalingGate`).

A check that found a failure but does not block says why (``waiver``: overridden by a person,
or advisory by policy), so a report never shows a waived failure as a plain pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evals.config import GatePolicy
from tasks.evals.runner import Metric, MetricTable, Scores
from tasks.evals.stats import PairedDifference, items_needed, paired_difference

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FLOOR = "floor"
REGRESSION = "regression"
POWER = "power"
# The paired comparisons as a picture, logged beside the gate report in the eval run.
GATE_PLOT = "gate_differences.png"
ALIGNMENT_TAX = "alignment_tax"
SCALING = "scaling_prediction"
TASK_PREDICTION = "task_prediction"

# The scaling-law gate's outcomes, as the release gate and the registry record them.
PASSED = "passed"
FAILED = "failed"
OVERRIDDEN = "overridden"
ADVISORY = "advisory"
SCALING_STATUSES = (PASSED, FAILED, OVERRIDDEN, ADVISORY)


@dataclass(frozen=True)
class Check:
    """One rule applied to one metric (or to the whole candidate), and what it found.

    ``waiver`` is set on a check that found a failure but does not block (``passed`` is then
    True): ``overridden`` or ``advisory``; its line then says so instead of PASS.
    """

    rule: str
    metric: str | None
    passed: bool
    detail: str
    waiver: str = ""

    def line(self) -> str:
        subject = f" {self.metric}" if self.metric else ""
        outcome = self.waiver.upper() if self.waiver else ("PASS" if self.passed else "FAIL")
        return f"{outcome} {self.rule}{subject}: {self.detail}"


@dataclass(frozen=True)
class Comparison:
    """A gated metric of candidate and reference, item by item: the difference, its interval and what the suite can see.

    The reference is the champion (rule ``regression``: ``margin`` is the regression margin) or,
    for an aligned model, its base model (rule ``alignment_tax``: ``margin`` is the tax bound).
    ``worse``, ``worse_low`` and ``worse_high`` are in the direction of worsening (positive:
    the candidate is worse), whichever way the metric improves.
    """

    metric: str
    margin: float
    candidate: float
    champion: float  # the reference's value: the champion's, or the base model's under alignment_tax
    paired: PairedDifference
    power: float
    higher_is_better: bool
    rule: str = REGRESSION

    @property
    def reference(self) -> str:
        return "base" if self.rule == ALIGNMENT_TAX else "champion"

    def _worsening(self, value: float) -> float:
        # + 0.0 turns the -0.0 of a negated zero into 0.0, which reports read as "+0.0000".
        return (-value if self.higher_is_better else value) + 0.0

    @property
    def worse(self) -> float:
        return self._worsening(self.paired.difference)

    @property
    def worse_low(self) -> float:
        return min(self._worsening(self.paired.low), self._worsening(self.paired.high))

    @property
    def worse_high(self) -> float:
        return max(self._worsening(self.paired.low), self._worsening(self.paired.high))

    @property
    def detectable(self) -> float:
        """The minimum detectable effect of this suite on this metric."""
        return self.paired.detectable(self.power)

    @property
    def items_needed(self) -> int | None:
        """Paired items for which the detectable effect would reach the margin (None: no number would, at margin 0)."""
        return items_needed(self.paired.items, self.detectable, self.margin)

    @property
    def outcome(self) -> str:
        """within (the margin), regression (the whole interval beyond it) or unresolved (the interval straddles it)."""
        if math.isfinite(self.candidate) and self.worse_high <= self.margin:
            return "within"
        return "regression" if self.worse_low > self.margin else "unresolved"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "worse": self.worse, "interval": [self.worse_low, self.worse_high],
                "detectable": self.detectable, "items_needed": self.items_needed, "outcome": self.outcome}


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a candidate, every check behind it, and the paired comparisons the checks read."""

    passed: bool
    checks: list[Check] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Every check as one line, failures first."""
        return [c.line() for c in sorted(self.checks, key=lambda c: c.passed)]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "comparisons": [c.to_dict() for c in self.comparisons]}


def check_policy(policy: GatePolicy, metrics: list[str]) -> None:
    """Fail before any evaluation when the policy names a metric the suite does not produce."""
    unknown = sorted(policy.metrics() - set(metrics))
    if unknown:
        raise ValueError(
            f"the gate policy names metrics the eval suite does not produce: {unknown}; "
            f"known metrics: {sorted(metrics)} (fix evals.gate in the profile)"
        )


def _metric(table: MetricTable, name: str, whose: str) -> Metric:
    if name not in table:
        raise ValueError(f"the {whose} has no {name!r} in its eval table (it has {sorted(table)})")
    return table[name]


def worsening(metric: Metric, reference: float) -> float:
    """How much worse ``metric`` is than ``reference`` in its own direction (negative: better)."""
    return reference - metric.value if metric.higher_is_better else metric.value - reference


def floor_check(table: MetricTable, name: str, bound: float) -> Check:
    metric = _metric(table, name, "candidate")
    relation = ">=" if metric.higher_is_better else "<="
    ok = math.isfinite(metric.value) and worsening(metric, bound) <= 0
    return Check(FLOOR, name, ok, f"{metric.value:.4f} must be {relation} {bound:g}")


def compare(
    candidate: Scores, champion: Scores, name: str, margin: float, policy: GatePolicy, rule: str = REGRESSION
) -> Comparison:
    """Candidate and reference (the champion, or the base model under ``alignment_tax``) on metric ``name``, paired item by item."""
    reference = "base model" if rule == ALIGNMENT_TAX else "champion"
    mine, theirs = _metric(candidate.table, name, "candidate"), _metric(champion.table, name, reference)
    for scores, whose in ((candidate, "candidate"), (champion, reference)):
        if name not in scores.items:
            raise ValueError(f"the {whose} has no per-item results for {name!r}: the {rule} check pairs items")
    paired = paired_difference(name, candidate.items[name], champion.items[name], policy.confidence, policy.bootstrap_iters)
    return Comparison(name, margin, mine.value, theirs.value, paired, policy.power, mine.higher_is_better, rule)


def tax_comparisons(aligned: Scores, base: Scores, policy: GatePolicy) -> list[Comparison]:
    """Each taxed metric of an aligned model against its base model, paired item by item, held to its bound."""
    return [compare(aligned, base, name, bound, policy, ALIGNMENT_TAX) for name, bound in sorted(policy.alignment_tax.items())]


def _interval(c: Comparison) -> str:
    return f"[{c.worse_low:+.4f}, {c.worse_high:+.4f}]"


def held_to_margin(c: Comparison) -> Check:
    """Pass only when the worse end of the paired difference's interval stays within the margin (the tax bound for a tax).

    A regression against the champion and an aligned model's tax against its base are the same
    question, asked of different references and limits.
    """
    limit = "bound" if c.rule == ALIGNMENT_TAX else "margin"
    said = (f"{'aligned' if c.rule == ALIGNMENT_TAX else 'candidate'} {c.candidate:.4f} vs {c.reference} {c.champion:.4f}: "
            f"{'tax' if c.rule == ALIGNMENT_TAX else 'worse by'} {c.worse:+.4f}, "
            f"{c.paired.confidence:.0%} interval {_interval(c)} over {c.paired.items} paired items")
    if c.outcome == "within":
        return Check(c.rule, c.metric, True, f"{said}, within {limit} {c.margin:g}")
    if c.outcome == "regression":
        return Check(c.rule, c.metric, False, f"{said}: the whole interval is beyond {limit} {c.margin:g}")
    return Check(c.rule, c.metric, False, f"{said}: unresolved, the interval reaches past {limit} {c.margin:g} "
                 f"and cannot rule out a worsening of {c.worse_high:+.4f}")


def power_check(c: Comparison, policy: GatePolicy) -> Check:
    """The suite's minimum detectable effect on the metric against its margin; how many items the margin needs."""
    said = (f"detectable effect {c.detectable:.4f} at {policy.confidence:.0%} confidence and {policy.power:.0%} power "
            f"with {c.paired.items} paired items")
    if c.detectable <= c.margin:
        return Check(POWER, c.metric, True, f"{said}, within margin {c.margin:g}")
    needed = (f"about {c.items_needed} items would see it (evals.suite.items_per_task; variant_items for few-shot "
              "and generation tasks, ppl_docs_per_source for perplexity)" if c.items_needed
              else "no number of items sees a margin of 0")
    short = f"{said} exceeds margin {c.margin:g}: the suite is underpowered; {needed}"
    if policy.underpowered == "report":
        return Check(POWER, c.metric, True, f"{short} (policy underpowered=report)", ADVISORY)
    return Check(POWER, c.metric, False, short)


@dataclass(frozen=True)
class ScalingGate:
    """The scaling-law gate's outcome on the target run, as the pipeline passes it to the release gate.

    ``status``: ``passed``; ``failed`` (the run missed its prediction and the policy requires
    the gate: the pipeline stops, the release gate rejects); ``overridden`` (it missed, and a
    person let it through with ``scaling.override_gate``: ``override_reason`` says why);
    ``advisory`` (it missed, and the policy ``evals.gate.scaling_gate=advisory`` only reports it).
    Flows take it as it is; a deployment's JSON parameter becomes one through the same checks.
    """

    status: str
    reasons: list[str]
    override_reason: str = ""
    prediction: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in SCALING_STATUSES:
            raise ValueError(f"scaling gate status {self.status!r} is not one of {SCALING_STATUSES}")
        if (self.status == OVERRIDDEN) != bool(self.override_reason.strip()):
            raise ValueError(
                f"scaling gate status {self.status!r} with override_reason {self.override_reason!r}: an overridden "
                "gate needs the reason it was overridden for (scaling.override_reason), and only an overridden one has one"
            )

    def to_dict(self) -> dict[str, Any]:
        """Its JSON form: what the judgement key hashes and the lineage records."""
        return asdict(self)

    def under(self, mode: str) -> ScalingGate:
        """This outcome under the policy's ``scaling_gate`` mode: a miss is advisory or failed as the policy says.

        The policy in force decides, whatever the caller marked a miss; a pass and a person's
        override stay as they are.
        """
        if self.status not in (FAILED, ADVISORY):
            return self
        return replace(self, status=ADVISORY if mode == ADVISORY else FAILED)

    @property
    def blocks(self) -> bool:
        """Whether the pipeline stops here and the release gate rejects."""
        return self.status == FAILED


def scaling_outcome(target: dict[str, Any], policy: GatePolicy) -> ScalingGate:
    """The scaling stage's decision on the target run (``target_gate``'s result) under the release policy.

    Whether the pipeline goes on: a pass and an override (``scaling.override_gate``, kept with its
    reason) do; a miss goes on as advisory under ``evals.gate.scaling_gate=advisory`` and stops
    the pipeline (:attr:`ScalingGate.blocks`) under ``required``.
    """
    outcome = ScalingGate(target["status"], list(target["reasons"]), target["override_reason"], target["prediction"])
    return outcome.under(policy.scaling_gate)


def scaling_check(scaling_gate: ScalingGate, mode: str) -> Check:
    """The scaling-law gate's outcome under the policy's ``scaling_gate`` mode.

    A pass passes; an override passes, reported as overridden with its reason; a miss is
    reported as advisory under ``advisory`` and fails the check under ``required``.
    """
    outcome = scaling_gate.under(mode)
    reasons = "; ".join(outcome.reasons) or "no reasons given"
    if outcome.status == OVERRIDDEN:
        return Check(SCALING, None, True, f"missed its prediction, overridden ({outcome.override_reason}): {reasons}", OVERRIDDEN)
    if outcome.status == ADVISORY:
        return Check(SCALING, None, True, f"missed its prediction (policy scaling_gate=advisory): {reasons}", ADVISORY)
    return Check(SCALING, None, outcome.status == PASSED, f"{outcome.status}: {reasons}")


def judge(
    candidate: Scores,
    policy: GatePolicy,
    champion: Scores | None = None,
    base: Scores | None = None,
    scaling_gate: ScalingGate | None = None,
    task_predictions: Sequence[Check] = (),
) -> Decision:
    """Apply every rule of ``policy``; the first candidate (no champion) faces the floors only.

    ``base`` is an aligned candidate's base model, scored on the same suite: its tax is paired
    item by item, like a regression. ``task_predictions`` are the checks of a target's measured
    task scores against the ladder's predictions (``tasks.evals.stage.task_prediction_checks``).
    """
    table = candidate.table
    checks = [floor_check(table, name, bound) for name, bound in sorted(policy.floors.items())]
    comparisons = []
    if champion is None:
        checks.append(Check(REGRESSION, None, True, "no champion yet: judged against the absolute floors only"))
    else:
        comparisons = [compare(candidate, champion, name, margin, policy) for name, margin in sorted(policy.regression_margins.items())]
        checks += [held_to_margin(c) for c in comparisons] + [power_check(c, policy) for c in comparisons]
    if base is not None:
        taxes = tax_comparisons(candidate, base, policy)
        checks += [held_to_margin(c) for c in taxes]
        comparisons += taxes
    if scaling_gate is not None:
        checks.append(scaling_check(scaling_gate, policy.scaling_gate))
    checks += task_predictions
    return Decision(all(c.passed for c in checks), checks, comparisons)


@task(name="release-gate", cache_policy=NO_CACHE)
def gate(
    candidate: Scores,
    policy: GatePolicy,
    champion: Scores | None,
    base: Scores | None,
    scaling_gate: ScalingGate | None,
    task_predictions: Sequence[Check] = (),
) -> Decision:
    """Prefect task around :func:`judge`."""
    return judge(candidate, policy, champion, base, scaling_gate, task_predictions)


def _cell(metric: Metric | None) -> str:
    if metric is None:
        return "—"
    stderr = f" ± {metric.stderr:.4f}" if metric.stderr is not None else ""
    return f"{metric.value:.4f}{stderr}"


def metrics_markdown(table: MetricTable, champion: MetricTable | None = None, base: MetricTable | None = None) -> str:
    """The eval table as Markdown, with the champion's and the base model's columns when given."""
    header = ["metric", "candidate"] + (["champion"] if champion is not None else []) + (["base"] if base is not None else [])
    lines = ["| " + " | ".join(header) + " | better |", "|" + "---|" * (len(header) + 1)]
    for name, metric in table.items():
        cells = [name, _cell(metric)]
        if champion is not None:
            cells.append(_cell(champion.get(name)))
        if base is not None:
            cells.append(_cell(base.get(name)))
        cells.append("higher" if metric.higher_is_better else "lower")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_markdown(comparisons: list[Comparison]) -> str:
    """The paired comparisons as a Markdown table: difference, interval, margin (or tax bound), detectable effect, items."""
    lines = ["| rule | metric | candidate | reference | worse by | interval | margin | detectable | items | needed | outcome |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {c.rule} | {c.metric} | {c.candidate:.4f} | {c.reference} {c.champion:.4f} | {c.worse:+.4f} | {_interval(c)} | {c.margin:g} | "
        f"{c.detectable:.4f} | {c.paired.items} | {c.items_needed or '—'} | {c.outcome} |"
        for c in comparisons
    ]
    return "\n".join(lines)


def comparisons_figure(comparisons: list[Comparison]) -> Figure:
    """Each gated metric's worsening with its interval against its margin, one row per metric in its own units.

    Built on ``matplotlib.figure.Figure`` directly (no pyplot state), as the scaling stage's plots are.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 0.5 + 1.1 * len(comparisons)), layout="constrained")
    axes = figure.subplots(len(comparisons), 1, squeeze=False)[:, 0]
    for ax, c in zip(axes, comparisons, strict=True):
        colour = {"within": "tab:green", "unresolved": "tab:orange", "regression": "tab:red"}[c.outcome]
        ax.errorbar([c.worse], [0], xerr=[[c.worse - c.worse_low], [c.worse_high - c.worse]], fmt="o", color=colour, capsize=4)
        ax.axvline(0, color="grey", linewidth=0.8)
        limit = "tax bound" if c.rule == ALIGNMENT_TAX else "margin"
        ax.axvline(c.margin, color="tab:red", linestyle="--", linewidth=1, label=f"{limit} {c.margin:g}")
        ax.axvspan(c.worse - c.detectable, c.worse + c.detectable, color=colour, alpha=0.08, label="± detectable effect")
        ax.set_yticks([])
        ax.set_title(f"{c.rule} {c.metric} vs {c.reference}: {c.outcome} ({c.paired.items} paired items)", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel(f"candidate worse than its reference by (metric units; {comparisons[0].paired.confidence:.0%} interval)")
    return figure


def report_markdown(
    decision: Decision,
    outcome: str,
    facts: dict[str, str],
    table: MetricTable,
    policy: GatePolicy,
    champion: MetricTable | None = None,
    base: MetricTable | None = None,
) -> str:
    """The gate's report: outcome, what was compared, every check with its reason, the table, the policy."""
    checks = "\n".join(
        f"| {'⚠️ ' + c.waiver if c.waiver else '✅' if c.passed else '❌'} | {c.rule} | {c.metric or '—'} | {c.detail} |"
        for c in sorted(decision.checks, key=lambda c: c.passed)
    )
    return "\n".join(
        [
            f"# Release gate: {outcome.upper()}",
            "",
            *(f"- **{key}**: {value}" for key, value in facts.items()),
            "",
            "## Checks",
            "",
            "| | rule | metric | reason |",
            "|---|---|---|---|",
            checks,
            "",
            *(["## Paired comparisons with the champion and the base model", "",
               "Worsening is positive; the interval and detectable effect are at the policy's confidence and power "
               f"(as a picture: {GATE_PLOT} in the eval run, and below in the Prefect report).", "",
               comparisons_markdown(decision.comparisons), ""] if decision.comparisons else []),
            "## Eval table",
            "",
            metrics_markdown(table, champion, base),
            "",
            "## Policy",
            "",
            "```yaml",
            policy.to_yaml().rstrip(),
            "```",
        ]
    )
