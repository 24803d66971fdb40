"""Benchmark of the ladder's design: one run per rung (today) against WSD decay branches.

Run: ``.venv/bin/python bench/scaling.py [--shards DIR] [--workdir DIR] [--budgets 0.5 1]
[--target-loss L]`` (the tiny profile on the example corpus's shards: about 4.4M training tokens
for budget 0.5 and 7M more for 1, plus 1.6M for the target unless its measured loss is given; at
the 30k tokens/s 2 idle cores train these models, minutes, on a busy shared machine an hour or more).
Runs are kept in ``--workdir`` and a rerun reuses finished ones, so an interrupted benchmark goes on.

Designs, each fitted with the scaling stage's own analysis (``fit_scaling_law``, with the train
split's size, so repeated data is fitted as effective data):

- **today**: each rung one cosine run to ``budget`` x 20 tokens per parameter, evaluated along
  the way (the points past ``min_tokens_fraction``), as ``tasks.scaling.ladder`` plans it;
- **branches**: each rung one WSD run whose stable phase is shared by decays at m/4, m/2, 3m/4
  and m tokens per parameter, each decay an evaluated point. m is chosen so the accounted
  compute, the stable run plus every decay, (1 - f) m + f (m/4 + m/2 + 3m/4 + m) with f the
  schedule's decay fraction, equals today's at the same budget.

A branch is emulated by a whole WSD run of the branch's length from the same seed: it follows
the shared stable run step for step up to its decay start (``tasks.train.schedule.decay_start``,
and the same warmup for every branch of a rung), so its point is the one a real branch from the
stable run's checkpoint would give. Emulating costs more wall time than branching would; the
compute column counts what branching costs (6 N D over the stable run and the decays).

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
from tasks.scaling.ladder import ScalingConfig, plan, rung_points, target, tokens_per_step, unique_tokens
from tasks.train.config import TrainConfig
from tasks.train.continued import resolve
from tasks.train.loop import RESULT, train
from tasks.train.shards import PackedShards

BRANCH_SHARES = (1 / 4, 1 / 2, 3 / 4, 1.0)  # of the longest branch: shorter ones end in the smallest rungs' warmup


def run(cfg: TrainConfig, shards: Path, run_dir: Path) -> Path:
    """Train ``cfg`` in ``run_dir`` unless a finished run is there; the run directory."""
    if not (run_dir / RESULT).exists():
        train(cfg, shards / "train", shards / "validation", run_dir)
    return run_dir


def branch_config(rung: TrainConfig, n_tokens: int, warmup: int, seq_len: int) -> TrainConfig:
    """The rung resized to one WSD branch of ``n_tokens``, evaluated at its end only."""
    steps = -(-n_tokens // tokens_per_step(rung, seq_len))
    return rung.model_copy(
        update={
            "max_tokens": n_tokens,
            "schedule": rung.schedule.model_copy(update={"kind": "wsd", "warmup_steps": warmup}),
            "eval": rung.eval.model_copy(update={"every_steps": steps}),
            "checkpoint": rung.checkpoint.model_copy(update={"every_steps": steps}),
        }
    )


def rung_flops(scaling: ScalingConfig, train_cfg: TrainConfig, shards: Path) -> list[tuple[TrainConfig, float]]:
    """Today's rungs and the FLOPs (6 N D) each trains."""
    train_split = PackedShards(shards / "train")
    return [
        (cfg, 6 * count_params(cfg.model)["non_embedding"] * cfg.total_steps(train_split.seq_len) * tokens_per_step(cfg, train_split.seq_len))
        for cfg in plan(scaling, train_cfg, train_split)
    ]


def today(scaling: ScalingConfig, train_cfg: TrainConfig, shards: Path, work: Path) -> tuple[list[tuple[float, float, float]], float]:
    """Points and ladder FLOPs of today's design."""
    seq_len = PackedShards(shards / "train").seq_len
    points, total = [], 0.0
    for index, (cfg, flops) in enumerate(rung_flops(scaling, train_cfg, shards)):
        run_dir = run(cfg, shards, work / f"today-b{scaling.budget:g}-r{index}")
        total += flops
        tokens = cfg.total_steps(seq_len) * tokens_per_step(cfg, seq_len)
        kept = rung_points(index, cfg, run_dir / "metrics.jsonl", seq_len, scaling.min_tokens_fraction * tokens)
        points += [(p.n_params, p.n_tokens, p.loss) for p in kept]
    return points, total


def branches(scaling: ScalingConfig, train_cfg: TrainConfig, shards: Path, work: Path) -> tuple[list[tuple[float, float, float]], float]:
    """Points and accounted ladder FLOPs of the decay-branch design at today's compute for ``scaling.budget``."""
    seq_len = PackedShards(shards / "train").seq_len
    f = train_cfg.schedule.decay_fraction
    longest = scaling.budget * scaling.tokens_per_param / ((1 - f) + f * sum(BRANCH_SHARES))
    points, flops = [], 0.0
    for index, cfg in enumerate(plan(scaling, train_cfg, PackedShards(shards / "train"))):
        n = float(count_params(cfg.model)["non_embedding"])
        budgets = [int(share * longest * cfg.target_params) for share in BRANCH_SHARES]
        warmup = min(train_cfg.schedule.warmup_steps, max(1, -(-budgets[-1] // tokens_per_step(cfg, seq_len)) // 10))
        seen = []
        for n_tokens in budgets:
            branch = branch_config(cfg, n_tokens, warmup, seq_len)
            steps = branch.total_steps(seq_len)
            # Runs are named by rung, warmup and length: budgets share the branches they have in common.
            run_dir = run(branch, shards, work / f"branch-r{index}-w{warmup}-s{steps}")
            result = json.loads((run_dir / RESULT).read_text())
            seen.append(steps * tokens_per_step(branch, seq_len))
            points.append((n, float(seen[-1]), float(result["final_val_loss"])))
        flops += 6 * n * ((1 - f) * seen[-1] + f * sum(seen))
    return points, flops


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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shards = args.shards
    if shards is None:
        latest = Workspace.from_env().store().latest("shards")
        if latest is None:
            raise SystemExit("no shards artifact: run `ladder tokenizer` first, or pass --shards")
        shards = latest.path / "shards"
    config = load(ProjectConfig, "tiny", [])
    actual = args.target_loss
    if actual is None:
        target_cfg = resolve(config.train, PackedShards(shards / "train"))
        actual = json.loads((run(target_cfg, shards, args.workdir / "target") / RESULT).read_text())["final_val_loss"]
    full = config.scaling.model_copy(update={"budget": 1.0})
    reference = sum(flops for _, flops in rung_flops(full, config.train, shards))
    print("| design | ladder compute (x today's) | points | self-check error | target predicted | actual | target error | unidentified |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for budget in args.budgets:
        scaling = config.scaling.model_copy(update={"budget": budget})
        for design in (branches, today):
            row = evaluate(f"{design.__name__}, budget {budget:g}", *design(scaling, config.train, shards, args.workdir), config, shards, actual)
            print(
                f"| {row['design']} | {row['ladder_flops']:.3g} ({row['ladder_flops'] / reference:.2f}) | {row['points']} | "
                f"{row['self_check']:+.2%} | {row['predicted']:.4f} | {row['actual']:.4f} | {row['target_error']:+.2%} | "
                f"{row['unidentified']} |",
                flush=True,
            )

if __name__ == "__main__":
    main()
