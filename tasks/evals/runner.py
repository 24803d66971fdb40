"""Score a Hugging Face checkpoint on the eval suite with lm-evaluation-harness itself.

``simple_evaluate`` with ``HFLM`` and a ``TaskManager`` on the suite's include path: the
numbers are lm-eval's, the ones its command line prints. What ladder adds:

- a standard error for the ratio metrics lm-eval reports without one (bits per byte, word and
  byte perplexity: its bootstrap covers only some aggregations), by the delta method on the
  per-document (log-likelihood, length) pairs lm-eval logs as samples;
- ``ladder_ppl``, the same metrics pooled over every source's documents;
- one flat table, ``<task>/<metric>`` -> value, stderr, direction, items, and the per-item
  results behind each of its numbers (:class:`tasks.evals.stats.ItemScores`): what the gate
  pairs against the champion's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.llama import LOADING
from tasks.evals.config import RunConfig
from tasks.evals.stats import RATIO_METRICS, ItemResults, ItemScores, ratio_metric
from tasks.evals.suite import PPL, Suite


@dataclass(frozen=True)
class Metric:
    """One number of the eval table with what the gate needs to judge it."""

    value: float
    stderr: float | None
    higher_is_better: bool
    items: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MetricTable = dict[str, Metric]


def table_to_dict(table: MetricTable) -> dict[str, dict[str, Any]]:
    """``{metric: {value, stderr, higher_is_better, items}}``, the form logged as metrics.json."""
    return {name: metric.to_dict() for name, metric in sorted(table.items())}


def table_from_dict(rows: dict[str, dict[str, Any]]) -> MetricTable:
    return {name: Metric(**row) for name, row in rows.items()}


def table_rows(table: MetricTable) -> list[dict[str, Any]]:
    """One row per metric (``metric``, value, stderr, higher_is_better, items): what flows return and accept."""
    return [{"metric": name, **metric.to_dict()} for name, metric in sorted(table.items())]


def table_from_rows(rows: list[dict[str, Any]]) -> MetricTable:
    """The inverse of :func:`table_rows`; a row missing a field is an error naming it."""
    try:
        return {row["metric"]: Metric(**{k: v for k, v in row.items() if k != "metric"}) for row in rows}
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"metric rows need metric, value, stderr, higher_is_better and items (as evals_flow returns them): {err}"
        ) from None


@dataclass(frozen=True)
class Scores:
    """A model's eval table and the per-item results behind it, on one suite: what the gate compares."""

    table: MetricTable
    items: ItemResults


@dataclass
class Evaluation:
    """lm-eval's output for one model on one suite, and the table and per-item results made from it."""

    table: MetricTable
    per_item: ItemResults
    results: dict[str, Any]  # simple_evaluate's output without the samples
    samples: dict[str, list[dict[str, Any]]]
    items: int
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")

    @property
    def scores(self) -> Scores:
        return Scores(self.table, self.per_item)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def metric_table(results: dict[str, Any], samples: dict[str, list[dict[str, Any]]], suite: Suite) -> MetricTable:
    """The flat table of every task's metrics, plus ``ladder_ppl`` pooled over the per-source tasks."""
    table: MetricTable = {}
    pooled: dict[str, list[tuple[float, float]]] = {}
    for name in suite.tasks:
        scores = results["results"][name]
        items = int(results["n-samples"][name]["effective"])
        for key, value in scores.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr"):
                continue
            stderr = _number(scores.get(f"{metric}_stderr,{filter_name}"))
            if metric in RATIO_METRICS:
                pairs = [tuple(sample[metric]) for sample in samples[name]]
                _, stderr = ratio_metric(pairs, metric)  # lm-eval's value stays; only the stderr is ours
                if name.startswith(f"{PPL}_"):
                    pooled.setdefault(metric, []).extend(pairs)
            full = f"{name}/{metric}"
            if full in table:
                raise ValueError(f"task {name} reports {metric} under two filters: give the suite one filter per metric")
            table[full] = Metric(float(value), stderr, suite.higher_is_better[full], items)
    for metric, pairs in pooled.items():
        value, stderr = ratio_metric(pairs, metric)
        table[f"{PPL}/{metric}"] = Metric(value, stderr, suite.higher_is_better[f"{PPL}/{metric}"], len(pairs))
    return dict(sorted(table.items()))


def item_results(samples: dict[str, list[dict[str, Any]]], suite: Suite) -> ItemResults:
    """Every metric of the table item by item, keyed by the suite's item ids; ``ladder_ppl`` pools the sources' documents."""
    results: ItemResults = {}
    for full in suite.metrics:
        name, _, metric = full.partition("/")
        if name == PPL:
            continue
        logged = samples[name]
        ids = tuple(sample["doc"]["id"] for sample in logged)
        if metric in RATIO_METRICS:
            loglikelihoods, counts = zip(*(sample[metric] for sample in logged), strict=True)
            results[full] = ItemScores(metric, ids, tuple(map(float, loglikelihoods)), tuple(map(float, counts)))
        else:
            results[full] = ItemScores(metric, ids, tuple(float(sample[metric]) for sample in logged))
    for full in suite.metrics:
        name, _, metric = full.partition("/")
        if name == PPL:
            sources = [results[f"{task}/{metric}"] for task in suite.tasks if task.startswith(f"{PPL}_")]
            results[full] = ItemScores(
                metric, sum((s.ids for s in sources), ()), sum((s.values for s in sources), ()),
                sum((s.counts or () for s in sources), ()),
            )
    return dict(sorted(results.items()))


def load_lm(model_dir: Path, suite: Suite, cfg: RunConfig, tokenizer_dir: Path | None = None) -> tuple[Any, Any]:
    """lm-eval's model for the checkpoint in ``model_dir`` (tokenizer files beside it, or in ``tokenizer_dir``)
    with the evals stage's run settings, and a task manager that knows only the suite's tasks.

    Whatever ladder scores on the suite (a candidate, a champion, the ladder's rungs) is loaded here,
    so that all of them are scored alike.
    """
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir} is not a Hugging Face checkpoint (no config.json): pass the model directory")
    tokenizer_source = tokenizer_dir or model_dir
    if not any((tokenizer_source / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"no tokenizer files in {tokenizer_source}: copy the tokenizer into the model directory")
    with LOADING:
        lm = HFLM(
            pretrained=str(model_dir),
            tokenizer=str(tokenizer_source),
            batch_size=cfg.batch_size,
            device=cfg.device,
            dtype=cfg.dtype,
            max_length=cfg.max_length,
        )
    # Only the suite's own tasks: indexing lm-eval's thousands of built-in YAMLs costs more than the tiny eval.
    return lm, TaskManager(include_path=str(suite.include_path), include_defaults=False)


def run_lm_eval(model_dir: Path, suite: Suite, cfg: RunConfig, tokenizer_dir: Path | None = None) -> Evaluation:
    """Score the checkpoint in ``model_dir`` (tokenizer files beside it, or in ``tokenizer_dir``) on every task."""
    import lm_eval

    started = time.perf_counter()
    lm, manager = load_lm(model_dir, suite, cfg, tokenizer_dir)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=suite.tasks, task_manager=manager, log_samples=True, bootstrap_iters=cfg.bootstrap_iters
    )
    seconds = time.perf_counter() - started
    samples = output.pop("samples")
    items = sum(int(n["effective"]) for n in output["n-samples"].values())
    return Evaluation(metric_table(output, samples, suite), item_results(samples, suite), output, samples, items, seconds)


@task(name="lm-eval", cache_policy=NO_CACHE)
def evaluate_checkpoint(model_dir: Path, suite: Suite, cfg: RunConfig, tokenizer_dir: Path | None = None) -> Evaluation:
    """Prefect task around :func:`run_lm_eval`."""
    return run_lm_eval(model_dir, suite, cfg, tokenizer_dir)
