"""Gains and tax of alignment: base, SFT and DPO models on held-out instruction tasks and on the pretraining evals.

Instruction tasks: greedy answers to the held-out items, scored by exact match (the task
score, ``instruct/accuracy``) and by the task's reward (``instruct/reward``). Pretraining
evals: the evaluation stage's lm-eval suite (held-out perplexity as bits per byte, multiple
choice cloze), run by the evaluation stage's own runner. The alignment tax is the release
gate's rule (``tasks.evals.gate.tax_comparisons``, paired item by item) with the gate's bounds
(``evals.gate.alignment_tax``), applied to each aligned model against the base model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.align.checkpoints import ModelRef, load_model
from tasks.align.config import AlignEvalConfig
from tasks.align.generate import generate
from tasks.align.instructions import Item
from tasks.align.rewards import exact, reward_for
from tasks.evals.config import GatePolicy, RunConfig
from tasks.evals.gate import Check, Comparison, held_to_margin, tax_comparisons
from tasks.evals.runner import Scores, run_lm_eval
from tasks.evals.stage import Verdict
from tasks.evals.suite import Suite

ACCURACY = "instruct/accuracy"
REWARD = "instruct/reward"


@dataclass
class ModelScores:
    """One model's held-out instruction scores and pretraining eval table."""

    name: str
    instruction: dict[str, float]
    evals: Scores
    answers: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """One flat table row: the model, its instruction scores, the value of each eval metric."""
        return {"model": self.name, **self.instruction, **{name: m.value for name, m in self.evals.table.items()}}


def answer_items(model: ModelRef, items: list[Item], cfg: AlignEvalConfig) -> list[dict[str, Any]]:
    """The model's greedy answer to every item, with its exact-match verdict and reward."""
    loaded, tokenizer = load_model(model.model_dir)
    answers = generate(loaded, tokenizer, [i.messages for i in items], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    records = []
    for item, (answer,) in zip(items, answers, strict=True):
        reward = reward_for(item.task)
        records.append({
            "item_id": item.id, "task": item.task, "answer": answer, "reference": item.response,
            "correct": exact(answer, item.response),
            "reward": reward(answer, item.response) if reward is not None else None,
        })
    return records


def instruction_scores(answers: list[dict[str, Any]]) -> dict[str, float]:
    """Exact-match accuracy and mean reward, over all items and per task."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in answers:
        by_task[record["task"]].append(record)

    def summary(records: list[dict[str, Any]], prefix: str) -> dict[str, float]:
        rewards = [r["reward"] for r in records if r["reward"] is not None]
        out = {f"{prefix}accuracy": sum(r["correct"] for r in records) / len(records)}
        if rewards:
            out[f"{prefix}reward"] = sum(rewards) / len(rewards)
        return out

    scores = summary(answers, "instruct/")
    for task_name, records in sorted(by_task.items()):
        scores.update(summary(records, f"instruct/{task_name}/"))
    return scores


@task(name="evaluate-aligned-model", cache_policy=NO_CACHE)
def evaluate_model(
    name: str, model: ModelRef, heldout: list[Item], cfg: AlignEvalConfig, suite: Suite, run_cfg: RunConfig
) -> ModelScores:
    """Held-out instruction scores and the eval suite's table (lm-eval) of one model."""
    answers = answer_items(model, heldout, cfg)
    return ModelScores(name, instruction_scores(answers), run_lm_eval(model.model_dir, suite, run_cfg).scores, answers)


@dataclass
class Summary:
    """The alignment's table, tax and verdict."""

    rows: list[dict[str, Any]]
    tax: dict[str, dict[str, float]]  # aligned model -> metric -> how much worse than base (negative: better)
    comparisons: dict[str, list[Comparison]]  # aligned model -> each taxed metric paired with the base, with its interval
    checks: dict[str, list[Check]]
    passed: bool  # the final model is within every alignment-tax bound
    markdown: str


@dataclass(frozen=True)
class AlignResult:
    """What the align flow returns: the models it trained, their table, the reward margin, the tax and the release verdict."""

    base_model_dir: str
    sft_model_dir: str
    dpo_model_dir: str
    table: list[dict[str, Any]]  # one row per model, base first (ModelScores.row)
    reward_margin: float  # DPO's implicit reward margin on held-out pairs
    reward_margin_accuracy: float  # share of held-out pairs ranked right
    tax: dict[str, dict[str, float]]
    tax_checks: dict[str, list[str]]  # aligned model -> each bound's reason line
    passed_tax_bound: bool
    mlflow_run_ids: dict[str, Any]  # align, sft, and one dpo run per iteration
    instructions: dict[str, Any]  # the instruction set's counts
    registry: Verdict | None  # the evals flow's verdict on the final model, with align.register_candidate


@task(name="summarize-alignment", cache_policy=NO_CACHE)
def summarize(
    scores: list[ModelScores], margin: dict[str, float], policy: GatePolicy, facts: dict[str, str]
) -> Summary:
    """Rows for every model (base first), the tax of each aligned model, the verdict on the last one."""
    base, aligned = scores[0], scores[1:]
    comparisons = {s.name: tax_comparisons(s.evals, base.evals, policy) for s in aligned}
    checks = {name: [held_to_margin(c) for c in taxed] for name, taxed in comparisons.items()}
    tax = {name: {c.metric: c.worse for c in taxed} for name, taxed in comparisons.items()}
    rows = [s.row() for s in scores]
    passed = all(c.passed for c in checks[aligned[-1].name])
    return Summary(rows, tax, comparisons, checks, passed, report_markdown(rows, margin, checks, facts))


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, one column per metric (in the first row's order)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row.get(c):.4f}" if isinstance(row.get(c), float) else str(row.get(c, "—")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(rows: list[dict[str, Any]], margin: dict[str, float], checks: dict[str, list[Check]], facts: dict[str, str]) -> str:
    """The alignment report: what was aligned, the table, the reward margin, the tax checks."""
    check_lines = [f"| {model} | {'✅' if c.passed else '❌'} | {c.metric} | {c.detail} |" for model, cs in checks.items() for c in cs]
    return "\n".join([
        "# Alignment: gains and tax",
        "",
        *(f"- **{key}**: {value}" for key, value in facts.items()),
        "",
        "## Held-out instruction tasks and pretraining evals",
        "",
        table_markdown(rows),
        "",
        "## DPO reward margin on held-out pairs",
        "",
        f"mean implicit-reward margin (chosen - rejected) {margin['margin']:+.4f} over {int(margin['pairs'])} pairs; "
        f"{margin['accuracy']:.1%} ranked the right way round",
        "",
        "## Alignment tax (the release gate's bound, against the base model)",
        "",
        "| model | | metric | check |",
        "|---|---|---|---|",
        *check_lines,
    ])
