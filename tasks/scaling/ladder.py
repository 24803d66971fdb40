"""The ladder's plan and its points: rung training configs from the target's, (N, D, L) from their runs.

Each rung is the target's training config with a smaller model (the size ladder picks its
shape from a non-embedding parameter target) and a token budget in Chinchilla units (20
tokens per parameter). N is the non-embedding parameter count of the model actually built, D
the tokens seen at a point, L the validation loss there. A rung yields several points in one
of two designs (``ScalingConfig.design``):

- ``runs``: one run of the budget, evaluated several times along the way;
- ``branches``: one warmup-stable-decay run (the stable run) and shorter decay branches, each
  started from the stable run's checkpoint at its own decay start and trained to its end, the
  final loss of each (the stable run's included) a point (Hägele et al. 2024; OLMo-core's
  ladder). A branch ends where a whole WSD run of its length would
  (``tasks.train.checkpoint.start_branch``), and the stable run plus every branch's decay
  costs no more than one run of the ``runs`` design.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ladder.config import Section
from models.llama import count_params
from tasks.scaling.config import ScalingFitConfig, TaskScoresConfig
from tasks.train.checkpoint import CheckpointStore, checkpoints, start_branch
from tasks.train.config import ScheduleConfig, TrainConfig
from tasks.train.continued import resolve
from tasks.train.schedule import decay_start
from tasks.train.shards import PackedShards


class ScalingConfig(Section):
    """The rungs to train, how to fit them, and how strictly the target run is held to the fit."""

    rungs: list[float] = Field(
        default_factory=lambda: [1e4, 2e4, 4e4, 8e4],
        description="Non-embedding parameter targets of the rungs: at least 4, geometric, spanning at least 8x.",
    )
    tokens_per_param: float = Field(20.0, gt=0, description="Chinchilla-optimal tokens per parameter (the budget unit).")
    budget: float = Field(1.0, gt=0, description="Each rung trains on budget x tokens_per_param x N tokens.")
    design: Literal["runs", "branches"] = Field(
        "runs",
        description="How a rung yields its points. runs: one run (train.schedule as configured) evaluated "
        "evals_per_rung times, the points past min_tokens_fraction fitted. branches: one WSD run whose stable phase "
        "is shared by decay branches of branch_shares of its length, each branch's final loss a point; the longest "
        "is as long as lets the stable run plus every shorter branch's decay cost what one run of the runs design "
        "does at this budget.",
    )
    branch_shares: list[float] = Field(
        default_factory=lambda: [0.125, 0.25, 0.5, 1.0],
        description="design=branches: each rung's branch lengths as shares of its longest (the stable run, 1), "
        "shortest first. Geometric (the 5, 10, 20, 40 tokens per parameter of OLMo's ladder, scaled to the "
        "budget) spreads the points evenly in log D. Rungs of a few hundred steps (the tiny profile's) want "
        "none shorter than half: a shorter branch decays while the loss still falls fast, and ends above the "
        "law (app/profiles/tiny-branches.yaml).",
    )
    evals_per_rung: int = Field(8, ge=2, description="Validation evaluations along each rung, evenly spaced in steps.")
    min_tokens_fraction: float = Field(
        0.25, ge=0, lt=1,
        description="design=runs: points before this share of a rung's budget are left out of the fit: early "
        "training is dominated by warmup transients, not by the law.",
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
        shares = self.branch_shares
        if shares[-1] != 1 or shares[0] <= 0 or any(b <= a for a, b in zip(shares, shares[1:])):
            raise ValueError(f"scaling.branch_shares must rise strictly from above 0 to 1 (the stable run), got {shares}")
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


def _rung_schedule(scaling: ScalingConfig, schedule: ScheduleConfig, steps: int) -> ScheduleConfig:
    """The rung's schedule for a run of ``steps``: warmup shortened to a tenth, WSD for design=branches."""
    update: dict[str, Any] = {"warmup_steps": min(schedule.warmup_steps, max(1, steps // 10))}
    if scaling.design == "branches":
        update["kind"] = "wsd"
    return schedule.model_copy(update=update)


def _branch_lengths(shares: list[float], longest: int) -> list[int]:
    return [max(1, round(share * longest)) for share in shares]


def branch_lengths(scaling: ScalingConfig, schedule: ScheduleConfig, run_steps: int) -> list[int]:
    """design=branches: a rung's branches in steps, shortest first, the last its stable run.

    The longest whose stable run plus every shorter branch's decay (from the stable run's
    checkpoint at the branch's decay start) trains at most ``run_steps``, what one run of the
    runs design does.
    """
    for longest in range(run_steps, 0, -1):
        rung_schedule = _rung_schedule(scaling, schedule, longest)
        lengths = _branch_lengths(scaling.branch_shares, longest)
        if longest + sum(n - decay_start(n, rung_schedule) for n in lengths[:-1]) <= run_steps:
            break
    if len(set(lengths)) < len(lengths) or lengths[0] <= rung_schedule.warmup_steps:
        raise ValueError(
            f"scaling.branch_shares {scaling.branch_shares} of a {longest}-step stable run give branches of {lengths} "
            f"steps, some the same or within the {rung_schedule.warmup_steps}-step warmup: raise scaling.budget or "
            "the smallest share"
        )
    return lengths


def rung_config(scaling: ScalingConfig, train: TrainConfig, target_params: float, seq_len: int) -> TrainConfig:
    """The target's training config, resized to one rung (its stable run for design=branches), evaluated
    ``evals_per_rung`` times."""
    max_tokens = int(scaling.budget * scaling.tokens_per_param * target_params)
    per_step = tokens_per_step(train, seq_len)
    steps = math.ceil(max_tokens / per_step)
    keep_steps: list[int] = []
    if scaling.design == "branches":
        lengths = branch_lengths(scaling, train.schedule, steps)
        steps, max_tokens = lengths[-1], lengths[-1] * per_step
        keep_steps = [decay_start(n, _rung_schedule(scaling, train.schedule, steps)) for n in lengths[:-1]]
    every = max(1, steps // scaling.evals_per_rung)
    return train.model_copy(
        update={
            "target_params": target_params,
            "max_tokens": max_tokens,
            "max_steps": steps,
            "eval": train.eval.model_copy(update={"every_steps": every}),
            "checkpoint": train.checkpoint.model_copy(update={"every_steps": every, "keep_steps": keep_steps}),
            "schedule": _rung_schedule(scaling, train.schedule, steps),
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


def branches(scaling: ScalingConfig, rung: TrainConfig, seq_len: int) -> list[TrainConfig]:
    """The rung's decay branches, shortest first (none for design=runs): its stable run ``rung`` cut to
    each shorter length, to start from the stable run's checkpoint at the branch's decay start."""
    if scaling.design == "runs":
        return []
    per_step = tokens_per_step(rung, seq_len)
    return [
        rung.model_copy(update={
            "max_steps": n, "max_tokens": n * per_step, "checkpoint": rung.checkpoint.model_copy(update={"keep_steps": []}),
        })
        for n in _branch_lengths(scaling.branch_shares, rung.total_steps(seq_len))[:-1]
    ]


def seed_branch(stable: TrainConfig, stable_checkpoints: Path, branch: TrainConfig, branch_checkpoints: Path, seq_len: int) -> None:
    """Start ``branch`` from its stable run's checkpoint at the branch's decay start, unless it has started.

    The checkpoint directories are the runs' ``checkpoints/``: the branch's run then resumes from
    the copy and trains only its decay; a branch that has a checkpoint resumes its own.
    """
    if checkpoints(branch_checkpoints):
        return
    step = decay_start(branch.total_steps(seq_len), branch.schedule)
    at_step = [c for c in checkpoints(stable_checkpoints) if c.step == step and CheckpointStore.verify(c) is None]
    if not at_step:
        raise ValueError(f"the stable run in {stable_checkpoints.parent} has no checkpoint at step {step} to branch from: "
                         "train it with checkpoint.keep_steps holding its branches' decay starts")
    start_branch(at_step[-1], stable, branch, branch_checkpoints, seq_len)


def branch_steps(branch: TrainConfig, seq_len: int) -> int:
    """Optimizer steps a decay branch trains itself: its decay (the rest it shares with its stable run)."""
    total = branch.total_steps(seq_len)
    return total - decay_start(total, branch.schedule)


def trained_steps(rung: TrainConfig, rung_branches: list[TrainConfig], seq_len: int) -> int:
    """Optimizer steps a rung trains: its run, and each branch's decay."""
    return rung.total_steps(seq_len) + sum(branch_steps(b, seq_len) for b in rung_branches)


def ladder_flops(scaling: ScalingConfig, train: TrainConfig, shards: PackedShards) -> float:
    """The ladder's training compute, 6 N D over every optimizer step its rungs train: each rung's
    run, and for design=branches each branch's decay (the steps it shares with its stable run once)."""
    seq_len = shards.seq_len
    return sum(
        6 * count_params(rung.model)["non_embedding"] * tokens_per_step(rung, seq_len)
        * trained_steps(rung, branches(scaling, rung, seq_len), seq_len)
        for rung in plan(scaling, train, shards)
    )


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


def final_point(rung: int, cfg: TrainConfig, result: dict[str, Any], seq_len: int) -> Point:
    """A run's point at its end, from its ``result.json``: a decay branch's, or a stable run's."""
    return Point(rung, float(count_params(cfg.model)["non_embedding"]), float(result["steps"] * tokens_per_step(cfg, seq_len)),
                 float(result["final_val_loss"]))


def design_points(scaling: ScalingConfig, rung: int, runs: list[tuple[TrainConfig, Path]], seq_len: int) -> list[Point]:
    """A rung's points from its finished runs' directories, the rung's own run last (its branches before it):
    design=runs, its evaluations past ``min_tokens_fraction`` of its budget; design=branches, each run's end."""
    if scaling.design == "branches":
        return [final_point(rung, cfg, json.loads((directory / "result.json").read_text()), seq_len) for cfg, directory in runs]
    cfg, directory = runs[-1]
    min_tokens = scaling.min_tokens_fraction * cfg.total_steps(seq_len) * tokens_per_step(cfg, seq_len)
    return rung_points(rung, cfg, directory / "metrics.jsonl", seq_len, min_tokens)
