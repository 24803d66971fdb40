"""Score a Hugging Face checkpoint on the eval suite with lm-evaluation-harness itself.

``simple_evaluate`` with ``HFLM`` and a ``TaskManager`` on the suite's include path: the
numbers are lm-eval's, the ones its command line prints. What ladder adds:

- a standard error for the ratio metrics lm-eval reports without one (bits per byte, word and
  byte perplexity: its bootstrap covers only some aggregations), by the delta method on the
  per-document (log-likelihood, length) pairs lm-eval logs as samples;
- ``ladder_ppl``, the same metrics pooled over every source's documents;
- one flat table, ``<task>/<metric>`` -> value, stderr, direction, items, which the gate reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evals.config import RunConfig
from tasks.evals.suite import PPL, Suite

# Aggregations lm-eval reports as -sum(loglikelihood) / sum(count), transformed: value of the
# mean negative log-likelihood per unit (nats), and its derivative for the delta method.
RATIO_METRICS = {
    "bits_per_byte": (lambda r: r / math.log(2), lambda r: 1 / math.log(2)),
    "byte_perplexity": (math.exp, math.exp),
    "word_perplexity": (math.exp, math.exp),
}


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


@dataclass
class Evaluation:
    """lm-eval's output for one model on one suite, and the table made from it."""

    table: MetricTable
    results: dict[str, Any]  # simple_evaluate's output without the samples
    samples: dict[str, list[dict[str, Any]]]
    items: int
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


def ratio_metric(pairs: list[tuple[float, float]], metric: str) -> tuple[float, float | None]:
    """``(value, stderr)`` of a ratio metric from per-document ``(loglikelihood, count)`` pairs.

    The ratio r = sum(-ll) / sum(count) is a ratio estimator; its delta-method variance is
    sum((-ll_i - r * count_i)^2) / (n (n-1) mean(count)^2). One document gives no stderr.
    """
    transform, slope = RATIO_METRICS[metric]
    nll = -np.asarray([p[0] for p in pairs], dtype=np.float64)
    count = np.asarray([p[1] for p in pairs], dtype=np.float64)
    if count.sum() <= 0:
        raise ValueError(f"{metric}: the scored documents have no {'bytes' if 'byte' in metric else 'words'}")
    r = float(nll.sum() / count.sum())
    n = len(pairs)
    if n < 2:
        return transform(r), None
    se_r = math.sqrt(((nll - r * count) ** 2).sum() / (n * (n - 1))) / float(count.mean())
    return transform(r), abs(slope(r)) * se_r


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


def run_lm_eval(model_dir: Path, suite: Suite, cfg: RunConfig, tokenizer_dir: Path | None = None) -> Evaluation:
    """Score the checkpoint in ``model_dir`` (tokenizer files beside it, or in ``tokenizer_dir``) on every task."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir} is not a Hugging Face checkpoint (no config.json): pass the model directory")
    tokenizer_source = tokenizer_dir or model_dir
    if not any((tokenizer_source / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"no tokenizer files in {tokenizer_source}: copy the tokenizer into the model directory")
    started = time.perf_counter()
    lm = HFLM(
        pretrained=str(model_dir),
        tokenizer=str(tokenizer_source),
        batch_size=cfg.batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        max_length=cfg.max_length,
    )
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=suite.tasks,
        # Only the suite's own tasks: indexing lm-eval's thousands of built-in YAMLs costs more than the tiny eval.
        task_manager=TaskManager(include_path=str(suite.include_path), include_defaults=False),
        log_samples=True,
        bootstrap_iters=cfg.bootstrap_iters,
    )
    seconds = time.perf_counter() - started
    samples = output.pop("samples")
    items = sum(int(n["effective"]) for n in output["n-samples"].values())
    return Evaluation(metric_table(output, samples, suite), output, samples, items, seconds)


@task(name="lm-eval", cache_policy=NO_CACHE)
def evaluate_checkpoint(model_dir: Path, suite: Suite, cfg: RunConfig, tokenizer_dir: Path | None = None) -> Evaluation:
    """Prefect task around :func:`run_lm_eval`."""
    return run_lm_eval(model_dir, suite, cfg, tokenizer_dir)
