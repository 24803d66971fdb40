"""The ladder's plan and its points: rung training configs from the target's, (N, D, L) from their runs.

Each rung is the target's training config with a smaller model (the size ladder picks its
shape from a non-embedding parameter target) and a token budget in Chinchilla units (20
tokens per parameter), evaluated several times along the way so that one rung yields several
(N, D, L) points. N is the non-embedding parameter count of the model actually built, D the
tokens seen at the evaluation, L the validation loss there.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ladder.config import Section
from models.llama import count_params
from tasks.scaling.config import ScalingFitConfig, TaskScoresConfig
from tasks.train.config import TrainConfig
from tasks.train.continued import resolve
from tasks.train.shards import PackedShards


class ScalingConfig(Section):
    """The rungs to train, how to fit them, and how strictly the target run is held to the fit."""

    rungs: list[float] = Field(
        default_factory=lambda: [1e4, 2e4, 4e4, 8e4],
        description="Non-embedding parameter targets of the rungs: at least 4, geometric, spanning at least 8x.",
    )
    tokens_per_param: float = Field(20.0, gt=0, description="Chinchilla-optimal tokens per parameter (the budget unit).")
    budget: float = Field(1.0, gt=0, description="Each rung trains on budget x tokens_per_param x N tokens.")
    evals_per_rung: int = Field(8, ge=2, description="Validation evaluations along each rung, evenly spaced in steps.")
    min_tokens_fraction: float = Field(
        0.25, ge=0, lt=1,
        description="Points before this share of a rung's budget are left out of the fit: early training is "
        "dominated by warmup transients, not by the law.",
    )
    parallel: int = Field(2, ge=1, description="Rungs trained side by side (each takes cores / parallel threads).")
    fit: ScalingFitConfig = Field(default_factory=ScalingFitConfig, description="Fit, bootstrap and gate tolerance.")
    task_scores: TaskScoresConfig = Field(
        default_factory=TaskScoresConfig, description="Eval-task scores predicted for the target from the rungs' scores."
    )
    compute_budgets: list[float] = Field(
        default_factory=lambda: [1e15, 1e17, 1e19],
        description="FLOP budgets C for which the compute-optimal (N, D) and expected loss are reported.",
    )
    override_gate: bool = Field(
        False, description="Let the pipeline go on when the target misses its prediction (recorded with the reason)."
    )
    override_reason: str = Field("", description="Why the gate is overridden; required when override_gate is true.")

    @model_validator(mode="after")
    def _ladder_shape(self) -> "ScalingConfig":
        rungs = sorted(self.rungs)
        if len(rungs) < 4:
            raise ValueError(f"scaling.rungs needs at least 4 rungs, got {len(rungs)}")
        if rungs[0] <= 0 or rungs[-1] / rungs[0] < 8:
            raise ValueError(f"scaling.rungs must span at least 8x in parameters, got {rungs[0]:g} to {rungs[-1]:g}")
        ratios = [b / a for a, b in zip(rungs, rungs[1:])]
        if max(ratios) / min(ratios) > 1.25:
            raise ValueError(f"scaling.rungs must be geometric (equal ratios between rungs), got ratios {ratios}")
        if self.override_gate and not self.override_reason.strip():
            raise ValueError("scaling.override_gate needs scaling.override_reason: say why the gate may be ignored")
        return self


@dataclass(frozen=True)
class Point:
    """One evaluation of one rung."""

    rung: int
    n_params: float  # non-embedding parameters of the built model
    n_tokens: float
    loss: float


def tokens_per_step(train: TrainConfig, seq_len: int) -> int:
    return train.global_batch_size * seq_len


def rung_config(scaling: ScalingConfig, train: TrainConfig, target_params: float, seq_len: int) -> TrainConfig:
    """The target's training config, resized to one rung, evaluated ``evals_per_rung`` times."""
    max_tokens = int(scaling.budget * scaling.tokens_per_param * target_params)
    steps = math.ceil(max_tokens / tokens_per_step(train, seq_len))
    every = max(1, steps // scaling.evals_per_rung)
    warmup = min(train.schedule.warmup_steps, max(1, steps // 10))
    return train.model_copy(
        update={
            "target_params": target_params,
            "max_tokens": max_tokens,
            "max_steps": steps,
            "eval": train.eval.model_copy(update={"every_steps": every}),
            "checkpoint": train.checkpoint.model_copy(update={"every_steps": every}),
            "schedule": train.schedule.model_copy(update={"warmup_steps": warmup}),
            "spike_guard": train.spike_guard.model_copy(
                update={"warmup_steps": min(train.spike_guard.warmup_steps, steps // 4)}
            ),
            "faults": [],
            "threads_per_process": max(1, (os.cpu_count() or 1) // scaling.parallel),
        }
    )


def plan(scaling: ScalingConfig, train: TrainConfig, shards: PackedShards) -> list[TrainConfig]:
    """The rungs' training configs, smallest first, resolved against the shards' vocabulary."""
    return [resolve(rung_config(scaling, train, n, shards.seq_len), shards) for n in sorted(scaling.rungs)]


def target(train: TrainConfig, shards: PackedShards) -> tuple[float, float]:
    """(N, D) of the target run: the non-embedding parameters it builds and the tokens it sees."""
    resolved = resolve(train, shards)
    n_params = count_params(resolved.model)["non_embedding"]
    return float(n_params), float(resolved.total_steps(shards.seq_len) * tokens_per_step(resolved, shards.seq_len))


def unique_tokens(shards: PackedShards) -> float:
    """One pass over the train split in the unit D is counted in: its packed rows times their length.

    D counts every position of every sequence trained on (padding included, a few per mille),
    so an epoch is the split's rows, not its non-padding tokens.
    """
    return float(len(shards) * shards.seq_len)


def rung_points(rung: int, cfg: TrainConfig, metrics_file: Path, seq_len: int, min_tokens: float) -> list[Point]:
    """The rung's validation evaluations from its ``metrics.jsonl``, past ``min_tokens``.

    A rollback rewinds the step counter; the last evaluation logged for a step is the one the
    finished run stands on, so later rows replace earlier ones of the same step.
    """
    n_params = float(count_params(cfg.model)["non_embedding"])
    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        row: dict[str, Any] = json.loads(line)
        if "val_loss" in row and row.get("step", 0) > 0:
            by_step[int(row["step"])] = float(row["val_loss"])
    per_step = tokens_per_step(cfg, seq_len)
    return [
        Point(rung, n_params, float(step * per_step), loss)
        for step, loss in sorted(by_step.items())
        if step * per_step >= min_tokens and math.isfinite(loss)
    ]
