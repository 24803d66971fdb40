"""The tokenizer stage under the stage contract, and what it publishes for people to read.

Two artifacts: ``tokenizer`` (inputs: the dataset version) holds every candidate, the
comparison and the chosen tokenizer in HF format under ``tokenizer/``; ``shards`` (inputs:
the dataset and tokenizer versions) holds the packed splits under ``shards/<split>/``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from tokenizers import Tokenizer

from ladder.artifacts import Artifact, ArtifactRef, Code, StageOutput
from ladder.tags import DATASET, TOKENIZER
from ladder.workspace import Workspace
from tasks.data.dataset import Dataset
from tasks.data.document import SPLITS
from tasks.tokenizer.compare import (
    ALL_SOURCES,
    evaluate_candidate,
    plot_rank_frequency,
    select,
    write_csv,
)
from tasks.tokenizer.config import PackingConfig, TokenizerTrainingConfig
from tasks.tokenizer.hf import save_hf
from tasks.tokenizer.pack import pack_split
from tasks.tokenizer.train import candidate_name, sample_rate

TOKENIZER_STAGE = "tokenizer"
SHARDS_STAGE = "shards"
TOKENIZER_DIR = "tokenizer"
CANDIDATES_DIR = "candidates"
SHARDS_DIR = "shards"
# What builds the two artifacts: candidates train with HF tokenizers and SentencePiece, and
# transformers converts and saves the chosen one; packing encodes with tokenizers into numpy arrays.
TOKENIZER_CODE = Code(("tasks.tokenizer", "tasks.data.document"), ("tokenizers", "sentencepiece", "transformers"))
SHARDS_CODE = Code(("tasks.tokenizer", "tasks.data.document"), ("tokenizers", "numpy"))
COMPARISON_CSV = "comparison.csv"
COMPARISON_JSON = "comparison.json"
RANK_FREQUENCY_PNG = "rank_frequency.png"
SUMMARY_COLUMNS = [
    "candidate", "vocab_size", "bytes_per_token", "fertility", "rare_token_mass",
    "vocab_utilisation", "round_trip_exact", "train_seconds", "encode_mb_per_s",
]


@dataclass(frozen=True)
class Tokenized:
    """What the tokenizer stage hands training: one dataset version's tokenizer and its packed shards."""

    dataset_md5: str
    tokenizer: ArtifactRef
    shards: ArtifactRef

    @classmethod
    def of_shards(cls, shards: Artifact) -> "Tokenized":
        """The hand-off a ``shards`` artifact was built for, read from its manifest's inputs."""
        inputs = shards.manifest["inputs"]
        return cls(inputs["dataset"], ArtifactRef(TOKENIZER_STAGE, inputs["tokenizer"]), shards.ref)


@dataclass(frozen=True)
class TokenizerResult:
    """The tokenizer flow's result: the hand-off to training and the comparison people read."""

    tokenized: Tokenized
    chosen: str
    rule: str
    reason: str
    table: list[dict[str, Any]]
    """One row per candidate (``SUMMARY_COLUMNS``) on the validation split."""
    packing_efficiency: float
    cached: bool


def build_tokenizer(data_dir: Path, cfg: TokenizerTrainingConfig, out: Path) -> StageOutput:
    """Train every candidate, compare them on validation, select one, save it in HF format."""
    rate = sample_rate(data_dir, cfg.max_train_bytes)
    jobs = [(kind, vocab_size) for kind in cfg.candidates for vocab_size in cfg.vocab_sizes]
    paths = [out / CANDIDATES_DIR / candidate_name(*job) / "tokenizer.json" for job in jobs]
    rows: list[dict[str, Any]] = []
    counts: dict[str, np.ndarray] = {}
    arguments = (*zip(*jobs), repeat(data_dir), repeat(rate), repeat(cfg), paths)
    # Each candidate trains on one core (the tokenizers thread pool stays off, in this process and
    # in the workers, which inherit its environment): with several candidates, one worker process a
    # core trains them side by side, each as it would here; one candidate is not worth a process.
    # spawn, not fork: this process holds Prefect's and MLflow's threads and locks.
    workers = min(len(jobs), os.cpu_count() or 1)
    with ExitStack() as stack:
        run = map
        if workers > 1:
            run = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))).map
        for job, (candidate_rows, candidate_counts) in zip(jobs, run(evaluate_candidate, *arguments), strict=True):
            counts[candidate_name(*job)] = candidate_counts
            rows += candidate_rows
    overall = [row for row in rows if row["source"] == ALL_SOURCES]
    selection = select(overall, cfg)
    chosen = next(row for row in overall if row["candidate"] == selection.chosen)
    save_hf(Tokenizer.from_file(str(out / CANDIDATES_DIR / selection.chosen / "tokenizer.json")), cfg, out / TOKENIZER_DIR)
    write_csv(rows, out / COMPARISON_CSV)
    plot_rank_frequency(counts, out / RANK_FREQUENCY_PNG)
    report = {"chosen": selection.chosen, "rule": selection.rule, "reason": selection.reason, "rows": rows}
    (out / COMPARISON_JSON).write_text(json.dumps(report, indent=2))
    return StageOutput(
        counts={
            "candidates": len(overall),
            "train_sample_tokens": int(counts[selection.chosen].sum()),
            "validation_documents": chosen["documents"],
        },
        metrics={key: chosen[key] for key in ("bytes_per_token", "fertility", "rare_token_mass", "vocab_utilisation")},
    )


def build_shards(data_dir: Path, tokenizer_dir: Path, packing: PackingConfig, out: Path) -> StageOutput:
    """Pack every curated split with the chosen tokenizer into ``shards/<split>/``."""
    counts: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    tokens = slots = 0
    for split in SPLITS:
        stats = pack_split(tokenizer_dir, data_dir, split, out / SHARDS_DIR / split, packing)
        counts[split] = {
            "documents": stats.num_documents,
            "sequences": stats.num_sequences,
            "tokens": stats.num_tokens,
            "padding": stats.num_padding,
        }
        metrics[f"packing_efficiency.{split}"] = stats.efficiency
        tokens += stats.num_tokens
        slots += stats.num_tokens + stats.num_padding
    metrics["packing_efficiency"] = tokens / slots if slots else 1.0
    return StageOutput(counts=counts, metrics=metrics)


# The stage contract caches these (by config and input versions), so Prefect's cache is off.
@task(name="train-and-select-tokenizer", cache_policy=NO_CACHE)
def train_and_select(ws: Workspace, cfg: TokenizerTrainingConfig, dataset: Dataset) -> tuple[Artifact, bool]:
    """The ``tokenizer`` artifact for this dataset and config: ``(artifact, cached)``."""
    return ws.store().run_stage(
        TOKENIZER_STAGE,
        cfg,
        {"dataset": dataset.md5},
        lambda out: build_tokenizer(dataset.path, cfg, out),
        code=TOKENIZER_CODE,
    )


@task(name="pack-token-shards", cache_policy=NO_CACHE)
def pack_shards(
    ws: Workspace, packing: PackingConfig, dataset: Dataset, tokenizer: Artifact
) -> tuple[Artifact, bool]:
    """The ``shards`` artifact of every split packed with ``tokenizer``: ``(artifact, cached)``."""
    return ws.store().run_stage(
        SHARDS_STAGE,
        packing,
        {"dataset": dataset.md5, "tokenizer": tokenizer.version},
        lambda out: build_shards(dataset.path, tokenizer.path / TOKENIZER_DIR, packing, out),
        code=SHARDS_CODE,
    )


def comparison(tokenizer: Artifact) -> dict[str, Any]:
    """The stored comparison: ``chosen``, ``rule``, ``reason`` and ``rows``."""
    return json.loads(tokenizer.file(COMPARISON_JSON).read_text())


def summary_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per candidate (overall) with the columns the rule and a reader look at first."""
    return [{column: row[column] for column in SUMMARY_COLUMNS} for row in rows if row["source"] == ALL_SOURCES]


def format_table(table: list[dict[str, Any]]) -> str:
    """A summary table as aligned text, for logs."""
    cells = [[f"{value:.4g}" if isinstance(value, float) else str(value) for value in row.values()] for row in table]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(SUMMARY_COLUMNS)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in [SUMMARY_COLUMNS, *cells])


@task(name="publish-tokenizer-report", cache_policy=NO_CACHE, retries=2)
def publish(
    ws: Workspace,
    cfg: TokenizerTrainingConfig,
    dataset_md5: str,
    tokenizer: Artifact,
    shards: Artifact,
    log_to_mlflow: bool,
) -> dict[str, Any]:
    """Log the comparison, rule and choice; a Prefect table artifact; an MLflow run when anything was built.

    Returns the stored comparison (``chosen``, ``rule``, ``reason``, ``rows`` overall and per
    source) with ``table``, its summary.
    """
    import mlflow
    from prefect.artifacts import create_table_artifact
    from prefect.logging import get_run_logger

    from ladder.tracking import stage_run

    report = comparison(tokenizer)
    report["table"] = summary_table(report["rows"])
    logger = get_run_logger()
    logger.info("tokenizer candidates on validation:\n%s", format_table(report["table"]))
    logger.info("rule: %s", report["rule"])
    logger.info("chosen: %s (%s)", report["chosen"], report["reason"])
    logger.info("packing efficiency: %.4f", shards.metrics["packing_efficiency"])
    create_table_artifact(
        key="tokenizer-comparison",
        table=report["rows"],
        description=f"Chosen **{report['chosen']}** by the rule: {report['rule']}. {report['reason']}.",
    )
    if log_to_mlflow:
        tags = {
            DATASET: dataset_md5,
            TOKENIZER: report["chosen"],
        }
        with stage_run(ws, "tokenizer", cfg, tokenizer, tags=tags, produces=[(shards.stage, shards.version)]):
            mlflow.log_metrics({**tokenizer.metrics, **shards.metrics})
            selection = f"rule: {report['rule']}\nchosen: {report['chosen']}\nreason: {report['reason']}\n"
            mlflow.log_text(selection, "selection.txt")
            mlflow.log_artifact(str(tokenizer.file(COMPARISON_CSV)))
            mlflow.log_artifact(str(tokenizer.file(RANK_FREQUENCY_PNG)))
            mlflow.log_artifacts(str(tokenizer.file(TOKENIZER_DIR)), artifact_path=TOKENIZER_DIR)
            mlflow.log_dict(shards.manifest["counts"], "shards_counts.json")
    return report
