"""Benchmark of the ladder's design: one run per rung (today) against WSD decay branches.

Run: ``.venv/bin/python bench/scaling.py [--shards DIR] [--workdir DIR] [--budgets 0.5 1]
[--target-loss L] [OVERRIDE ...]`` (the tiny profile, with dotted overrides such as
``scaling.branch_shares=[0.25,0.5,1]``, on the example corpus's shards: about 3M training tokens
for budget 0.5 (both designs) and 6M more for 1, plus 1.6M for the target unless its measured
loss is given; at the 30k tokens/s 2 idle cores train these models, minutes, on a busy shared
machine an hour or more).
Runs are kept in ``--workdir`` and a rerun reuses finished ones, so an interrupted benchmark goes on.

Designs, each fitted with the scaling stage's own analysis (``fit_scaling_law``, with the train
split's size, so repeated data is fitted as effective data):

- **runs** (today's): each rung one cosine run to ``budget`` x 20 tokens per parameter, evaluated along
  the way (the points past ``min_tokens_fraction``), as ``tasks.scaling.ladder`` plans it;
- **branches**: each rung one WSD stable run and decay branches of ``scaling.branch_shares`` of its
  length, each started from the stable run's checkpoint at its decay start, each branch's final loss
  a point, as ``tasks.scaling.ladder`` plans it for ``scaling.design=branches``: the stable run plus
  every branch's decay trains no more steps than today's one run of the rung.

The compute column counts what each design trains, 6 N D over every optimizer step (a branch's
steps shared with its stable run counted once).

Printed per design and budget (``--budgets``, default 0.5 then 1 of today's ladder compute, the
cheaper first; rows print as they come): the ladder's compute against today's, its points, the
self-check error (top rung predicted from the others), the target's predicted and actual loss
and the error, and the unidentified parameters.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from app.project import ProjectConfig
from ladder.config import load
from ladder.workspace import Workspace
from models.llama import count_params
from tasks.scaling.analysis import fit_scaling_law
from tasks.scaling.ladder import (
    ScalingConfig,
    branches as rung_branches,
    design_points,
    plan,
    seed_branch,
    target,
    tokens_per_step,
    trained_steps,
    unique_tokens,
)
from tasks.train.config import TrainConfig
from tasks.train.continued import resolve
from tasks.train.loop import CHECKPOINTS_DIR, RESULT, train
from tasks.train.shards import PackedShards


def run(cfg: TrainConfig, shards: Path, run_dir: Path) -> Path:
    """Train ``cfg`` in ``run_dir`` unless a finished run is there; the run directory."""
    if not (run_dir / RESULT).exists():
        train(cfg, shards / "train", shards / "validation", run_dir)
    return run_dir


def flops(cfg: TrainConfig, steps: int, seq_len: int) -> float:
    """6 N D of ``steps`` optimizer steps of ``cfg``."""
    return 6 * count_params(cfg.model)["non_embedding"] * steps * tokens_per_step(cfg, seq_len)


def ladder(scaling: ScalingConfig, train_cfg: TrainConfig, shards: Path, work: Path) -> tuple[list[tuple[float, float, float]], float]:
    """Points and trained FLOPs of the ladder ``scaling.design`` plans, its runs kept in ``work``."""
    train_split = PackedShards(shards / "train")
    seq_len = train_split.seq_len
    points, total = [], 0.0
    for index, cfg in enumerate(plan(scaling, train_cfg, train_split)):
        # Named by config: a rerun with other shares or budgets trains only what changed.
        run_dir = run(cfg, shards, work / f"{scaling.design}-r{index}-{cfg.hash()}")
        branches = rung_branches(scaling, cfg, seq_len)
        total += flops(cfg, trained_steps(cfg, branches, seq_len), seq_len)
        runs = []
        for branch in branches:
            branch_dir = work / f"branch-r{index}-{branch.hash()}"
            seed_branch(cfg, run_dir / CHECKPOINTS_DIR, branch, branch_dir / CHECKPOINTS_DIR, seq_len)
            runs.append((branch, run(branch, shards, branch_dir)))
        points += [(p.n_params, p.n_tokens, p.loss) for p in design_points(scaling, index, [*runs, (cfg, run_dir)], seq_len)]
    return points, total


def evaluate(name: str, points: list[tuple[float, float, float]], flops: float, config: ProjectConfig, shards: Path, actual: float) -> dict:
    n, d, loss = (np.array(column) for column in zip(*points))
    train_split = PackedShards(shards / "train")
    result = fit_scaling_law.fn(n, d, loss, config.scaling.fit, unique_tokens(train_split))
    predicted = result.predict(*target(config.train, train_split))
    return {
        "design": name, "ladder_flops": flops, "points": len(points), "self_check": result.holdout.rel_error,
        "predicted": predicted.loss, "actual": actual, "target_error": actual / predicted.loss - 1,
        "unidentified": ",".join(result.unidentified) or "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, help="packed shards (train/, validation/); default: the latest shards artifact")
    parser.add_argument("--workdir", type=Path, default=Path(".ladder/bench/scaling"), help="where runs are kept and reused")
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=[0.5, 1.0],
        help="ladder budgets to compare the designs at, in order (1: today's ladder compute); the cheapest first",
    )
    parser.add_argument(
        "--target-loss", type=float,
        help="the target's measured validation loss when it is already trained (the pipeline's train artifact "
        "on these shards, result.json final_val_loss): skips training it here",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the tiny profile (key=value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shards = args.shards
    if shards is None:
        latest = Workspace.from_env().store().latest("shards")
        if latest is None:
            raise SystemExit("no shards artifact: run `ladder tokenizer` first, or pass --shards")
        shards = latest.path / "shards"
    config = load(ProjectConfig, "tiny", args.overrides)
    actual = args.target_loss
    if actual is None:
        target_cfg = resolve(config.train, PackedShards(shards / "train"))
        actual = json.loads((run(target_cfg, shards, args.workdir / "target") / RESULT).read_text())["final_val_loss"]
    seq_len = PackedShards(shards / "train").seq_len
    full = config.scaling.model_copy(update={"budget": 1.0, "design": "runs"})
    reference = sum(flops(cfg, cfg.total_steps(seq_len), seq_len) for cfg in plan(full, config.train, PackedShards(shards / "train")))
    print("| design | ladder compute (x today's) | points | self-check error | target predicted | actual | target error | unidentified |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for budget in args.budgets:
        for design in ("branches", "runs"):
            scaling = config.scaling.model_copy(update={"budget": budget, "design": design})
            name = "runs" if design == "runs" else f"branches at {'/'.join(f'{share:g}' for share in scaling.branch_shares)}"
            row = evaluate(f"{name}, budget {budget:g}", *ladder(scaling, config.train, shards, args.workdir), config, shards, actual)
            print(
                f"| {row['design']} | {row['ladder_flops']:.3g} ({row['ladder_flops'] / reference:.2f}) | {row['points']} | "
                f"{row['self_check']:+.2%} | {row['predicted']:.4f} | {row['actual']:.4f} | {row['target_error']:+.2%} | "
                f"{row['unidentified']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
