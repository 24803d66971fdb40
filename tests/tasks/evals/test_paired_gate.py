"""The paired gate on real lm-eval scores of tiny models: a known regression is caught, an equal candidate passes, no prompt is cut."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import TinyModels
from ladder.workspace import Workspace
from tasks.data.dataset import Dataset, dvc_dir_md5
from tasks.evals.config import GatePolicy, RunConfig, SuiteConfig
from tasks.evals.gate import REGRESSION, judge
from tasks.evals.runner import Scores, run_lm_eval
from tasks.evals.suite import PPL, Suite, build_suite

pytestmark = pytest.mark.slow  # trains a tiny model (10 steps)

BPB = f"{PPL}/bits_per_byte"
# The blurred candidate is about 0.01 bits per byte worse, a little on every document: twice this margin.
MARGIN = 0.005
POLICY = GatePolicy(floors={}, regression_margins={BPB: MARGIN}, alignment_tax={})


def _suite(tiny_models: TinyModels, root: Path, cfg: SuiteConfig) -> Suite:
    return build_suite.fn(Workspace(root), cfg, Dataset(dvc_dir_md5(tiny_models.data_dir), tiny_models.data_dir, "test"))


@pytest.fixture(scope="module")
def perplexity_suite(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    """Held-out documents only: the gated metric here is bits per byte."""
    suite = _suite(tiny_models, tmp_path_factory.mktemp("suite"), SuiteConfig(items_per_task=4, ppl_docs_per_source=12))
    tasks = [t for t in suite.tasks if t.startswith(f"{PPL}_")]
    return replace(suite, tasks=tasks, metrics=[m for m in suite.metrics if m.split("/")[0] in (*tasks, PPL)])


def _scores(model_dir: Path, suite: Suite) -> Scores:
    return run_lm_eval(model_dir, suite, RunConfig()).scores


def test_the_paired_gate_rejects_a_known_regression_the_unpaired_rule_let_through_and_passes_an_equal_candidate(
    tiny_models: TinyModels, perplexity_suite: Suite
) -> None:
    champion, worse, copy = (_scores(m, perplexity_suite) for m in (tiny_models.champion, tiny_models.worse, tiny_models.copy))
    candidate, best = worse.table[BPB], champion.table[BPB]
    worsening = candidate.value - best.value
    # The rule before pairing allowed max(margin, 2 x sqrt(se_candidate^2 + se_champion^2)): the documents differ
    # between them more than the models do, so the regression passed.
    assert MARGIN < worsening <= 2 * math.hypot(candidate.stderr, best.stderr)

    decision = judge(worse, POLICY, champion)
    assert {(c.rule, c.metric) for c in decision.checks if not c.passed} == {(REGRESSION, BPB)}
    (comparison,) = decision.comparisons
    assert comparison.outcome == "regression" and comparison.worse == pytest.approx(worsening)
    assert comparison.worse_low > MARGIN and comparison.detectable < MARGIN  # every document a little worse: seen clearly

    same = judge(copy, POLICY, champion)
    assert same.passed
    assert same.comparisons[0].paired.difference == 0 and same.comparisons[0].outcome == "within"


class _Truncations(logging.Handler):
    """lm-eval's warnings that a prompt was cut to fit the model's context."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "exceeds model's maximum length" in message or "Left truncation applied" in message:
            self.messages.append(message)


@pytest.fixture
def truncations() -> Iterator[_Truncations]:
    handler = _Truncations()
    logger = logging.getLogger("lm_eval")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_tiny_profile_items_fit_the_models_context(tiny_models: TinyModels, tmp_path: Path, truncations: _Truncations) -> None:
    # The tiny profile's prompt budget and few-shot setting; fewer items, since every prompt is bounded alike.
    suite = _suite(tiny_models, tmp_path, SuiteConfig(items_per_task=24, fewshot_pool=8, ppl_docs_per_source=1))
    assert all(suite.counts["tasks"][family]["kept"] > 0 for family in ("ladder_next_line", "ladder_last_word"))
    run_lm_eval(tiny_models.champion, suite, RunConfig())
    assert truncations.messages == []
