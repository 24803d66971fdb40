"""Benchmark of the ladder's design: one run per rung (today) against WSD decay branches.

Run: ``.venv/bin/python bench/scaling.py [--profile NAME] [--shards DIR] [--workdir DIR]
[--budgets B ...] [--target-loss L] [OVERRIDE ...]``: the profile's ladder (``tiny`` by default;
``tiny-branches`` is #16's ladder of decay branches), with dotted overrides such as
``scaling.branch_shares=[0.25,0.5,1]``, on the example corpus's shards. For the tiny profile about
3M training tokens for budget 0.5 (both designs) and 6M more for 1, plus 1.6M for the target
unless its measured loss is given: at the 30k tokens/s 2 idle cores train these models, minutes
(``--profile tiny-branches``, all its rows: under 10 minutes on 2 idle cores).
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

Printed first, today's ladder (the tiny profile's four rungs, one run each at budget 1); then per
budget (``--budgets``, default half the profile's budget, then the profile's; rows print as they
come) both designs with the profile's rungs: the ladder's compute against today's, its points, the
self-check error (top rung predicted from the others), the target's predicted and actual loss and
the error, and the unidentified parameters.
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
from tasks.scaling.analysis import fit_scaling_law
from tasks.scaling.ladder import (
    ScalingConfig,
    branches as rung_branches,
    design_points,
    ladder_flops,
    plan,
    seed_branch,
    target,
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


def ladder(scaling: ScalingConfig, train_cfg: TrainConfig, shards: Path, work: Path) -> tuple[list[tuple[float, float, float]], float]:
    """Points and trained FLOPs of the ladder ``scaling.design`` plans, its runs kept in ``work``."""
    train_split = PackedShards(shards / "train")
    seq_len = train_split.seq_len
    points = []
    for index, cfg in enumerate(plan(scaling, train_cfg, train_split)):
        # Named by config: a rerun with other shares or budgets trains only what changed.
        run_dir = run(cfg, shards, work / f"{scaling.design}-r{index}-{cfg.hash()}")
        branches = rung_branches(scaling, cfg, seq_len)
        runs = []
        for branch in branches:
            branch_dir = work / f"branch-r{index}-{branch.hash()}"
            seed_branch(cfg, run_dir / CHECKPOINTS_DIR, branch, branch_dir / CHECKPOINTS_DIR, seq_len)
            runs.append((branch, run(branch, shards, branch_dir)))
        points += [(p.n_params, p.n_tokens, p.loss) for p in design_points(scaling, index, [*runs, (cfg, run_dir)], seq_len)]
    return points, ladder_flops(scaling, train_cfg, train_split)


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


def row(name: str, scaling: ScalingConfig, config: ProjectConfig, shards: Path, work: Path, actual: float, reference: float) -> str:
    """The table's row of the ladder ``scaling`` plans from ``config``'s target run."""
    result = evaluate(name, *ladder(scaling, config.train, shards, work), config, shards, actual)
    return (
        f"| {result['design']} | {result['ladder_flops']:.3g} ({result['ladder_flops'] / reference:.2f}) | {result['points']} | "
        f"{result['self_check']:+.2%} | {result['predicted']:.4f} | {result['actual']:.4f} | {result['target_error']:+.2%} | "
        f"{result['unidentified']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, help="packed shards (train/, validation/); default: the latest shards artifact")
    parser.add_argument("--workdir", type=Path, default=Path(".ladder/bench/scaling"), help="where runs are kept and reused")
    parser.add_argument("--profile", default="tiny", help="the profile whose ladder both designs train (tiny-branches: #16's)")
    parser.add_argument(
        "--budgets", type=float, nargs="+",
        help="ladder budgets to compare the designs at, in order (default: half the profile's, then the profile's)",
    )
    parser.add_argument(
        "--target-loss", type=float,
        help="the target's measured validation loss when it is already trained (the pipeline's train artifact "
        "on these shards, result.json final_val_loss): skips training it here",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the profile (key=value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shards = args.shards
    if shards is None:
        latest = Workspace.from_env().store().latest("shards")
        if latest is None:
            raise SystemExit("no shards artifact: run `ladder tokenizer` first, or pass --shards")
        shards = latest.path / "shards"
    config = load(ProjectConfig, args.profile, args.overrides)
    # Today's ladder: the tiny profile's rungs, one run each at budget 1, on the same target run.
    today = load(ProjectConfig, "tiny", [o for o in args.overrides if not o.startswith("scaling.")])
    actual = args.target_loss
    if actual is None:
        target_cfg = resolve(config.train, PackedShards(shards / "train"))
        actual = json.loads((run(target_cfg, shards, args.workdir / "target") / RESULT).read_text())["final_val_loss"]
    reference = ladder_flops(today.scaling, today.train, PackedShards(shards / "train"))
    print("| design | ladder compute (x today's) | points | self-check error | target predicted | actual | target error | unidentified |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    print(row(f"today's: runs, {len(today.scaling.rungs)} rungs, budget 1", today.scaling, today, shards, args.workdir, actual,
              reference), flush=True)
    for budget in args.budgets or [config.scaling.budget / 2, config.scaling.budget]:
        for design in ("branches", "runs"):
            scaling = config.scaling.model_copy(update={"budget": budget, "design": design})
            name = "runs" if design == "runs" else f"branches at {'/'.join(f'{share:g}' for share in scaling.branch_shares)}"
            print(row(f"{name}, {len(scaling.rungs)} rungs, budget {budget:g}", scaling, config, shards, args.workdir, actual,
                      reference), flush=True)


if __name__ == "__main__":
    main()
