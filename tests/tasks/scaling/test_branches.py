"""WSD decay branches: a rung's stable run, its checkpoints at the branches' decay starts, and branches
that end where whole runs of their lengths would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.project import ProjectConfig
from ladder.config import build, load
from tasks.scaling.ladder import ScalingConfig, branch_steps, branches, ladder_flops, plan, seed_branch, trained_steps
from tasks.train.checkpoint import checkpoints, start_branch
from tasks.train.config import TrainConfig
from tasks.train.continued import resolve
from tasks.train.loop import CHECKPOINTS_DIR, MODEL_DIR, train
from tasks.train.schedule import decay_start
from tasks.train.shards import PackedShards
from tests.tasks.train.train_fixtures import SEQ_LEN, tiny_config, write_shards

WSD = {"kind": "wsd", "warmup_steps": 4}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / MODEL_DIR / "model.safetensors")


def test_a_branch_from_the_stable_runs_checkpoint_ends_as_a_whole_run_of_its_length(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", train_docs=200, val_docs=20)
    split = PackedShards(shards / "train")
    branch = resolve(tiny_config(max_steps=20, schedule=WSD), split)
    start = decay_start(20, branch.schedule)
    stable = resolve(
        tiny_config(max_steps=36, schedule=WSD, checkpoint={"every_steps": 10, "keep_last": 1, "keep_steps": [start]}), split
    )
    stable_dir, whole_dir, branch_dir = tmp_path / "stable", tmp_path / "whole", tmp_path / "branch"
    train(stable, shards / "train", shards / "validation", stable_dir)
    # keep_last would have pruned it: the branch point outlives it.
    assert start % 10 and start in {c.step for c in checkpoints(stable_dir / CHECKPOINTS_DIR)}

    whole = train(branch, shards / "train", shards / "validation", whole_dir)
    seed_branch(stable, stable_dir / CHECKPOINTS_DIR, branch, branch_dir / CHECKPOINTS_DIR, SEQ_LEN)
    branched = train(branch, shards / "train", shards / "validation", branch_dir)

    assert branched["resumed_from"] is not None and branched["steps"] == whole["steps"] == 20
    assert branched["final_val_loss"] == whole["final_val_loss"]
    whole_weights, branch_weights = _weights(whole_dir), _weights(branch_dir)
    assert whole_weights.keys() == branch_weights.keys()
    assert all(torch.equal(whole_weights[name], branch_weights[name]) for name in whole_weights)

    # A started branch resumes its own checkpoints; none is copied again.
    seed_branch(stable, stable_dir / CHECKPOINTS_DIR, branch, branch_dir / CHECKPOINTS_DIR, SEQ_LEN)

    (late,) = [c for c in checkpoints(stable_dir / CHECKPOINTS_DIR) if c.step == 30]
    with pytest.raises(ValueError, match="does not follow"):
        start_branch(late, stable, branch, tmp_path / "late", SEQ_LEN)
    (at_start,) = [c for c in checkpoints(stable_dir / CHECKPOINTS_DIR) if c.step == start]
    other_lr = branch.model_copy(update={"optimizer": branch.optimizer.model_copy(update={"lr": 1e-3})})
    with pytest.raises(ValueError, match="optimizer"):
        start_branch(at_start, stable, other_lr, tmp_path / "other", SEQ_LEN)
    with pytest.raises(ValueError, match="not of the source config"):
        start_branch(at_start, branch, branch, tmp_path / "unrelated", SEQ_LEN)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        start_branch(at_start, stable, branch, branch_dir / CHECKPOINTS_DIR, SEQ_LEN)


def test_a_branched_rung_costs_no_more_than_one_run_and_checkpoints_each_decay_start(tmp_path: Path) -> None:
    split = PackedShards(write_shards(tmp_path / "shards", train_docs=20, val_docs=4) / "train")
    train_cfg = TrainConfig(global_batch_size=8, micro_batch_size=8, schedule={"warmup_steps": 20})
    runs = plan(ScalingConfig(budget=0.5), train_cfg, split)
    scaling = ScalingConfig(budget=0.5, design="branches")
    for run, stable in zip(runs, plan(scaling, train_cfg, split)):
        rung_branches = branches(scaling, stable, SEQ_LEN)
        lengths = [b.total_steps(SEQ_LEN) for b in rung_branches] + [stable.total_steps(SEQ_LEN)]
        assert stable.schedule.kind == "wsd" and len(lengths) == len(scaling.branch_shares)
        assert lengths == sorted(set(lengths)) and lengths[0] > stable.schedule.warmup_steps
        assert stable.checkpoint.keep_steps == [decay_start(n, stable.schedule) for n in lengths[:-1]]
        assert all(b.checkpoint.keep_steps == [] and b.schedule == stable.schedule for b in rung_branches)
        # The stable run and every decay together: at most what one run of the runs design trains, and near it.
        assert 0.95 * run.total_steps(SEQ_LEN) <= trained_steps(stable, rung_branches, SEQ_LEN) <= run.total_steps(SEQ_LEN)
        assert sum(branch_steps(b, SEQ_LEN) for b in rung_branches) < stable.total_steps(SEQ_LEN)
    assert branches(ScalingConfig(), runs[0], SEQ_LEN) == []


@pytest.mark.parametrize("shares", [[0.5, 0.25, 1.0], [0.25, 0.5], [0.0, 1.0]])
def test_branch_shares_rise_to_the_stable_run(shares: list[float]) -> None:
    with pytest.raises(ValueError, match="branch_shares"):
        build(ScalingConfig, {"branch_shares": shares})


def test_branches_within_the_warmup_are_refused(tmp_path: Path) -> None:
    split = PackedShards(write_shards(tmp_path / "shards", train_docs=20, val_docs=4) / "train")
    scaling = ScalingConfig(budget=0.01, design="branches", branch_shares=[0.01, 1.0])
    with pytest.raises(ValueError, match="warmup"):
        plan(scaling, TrainConfig(global_batch_size=8, micro_batch_size=8), split)


def test_the_tiny_branches_profile_trains_a_ladder_of_todays_compute_at_most(tmp_path: Path) -> None:
    split = PackedShards(write_shards(tmp_path / "shards", train_docs=20, val_docs=4) / "train")
    today, branched = (load(ProjectConfig, name) for name in ("tiny", "tiny-branches"))
    assert branched.train == today.train and branched.scaling.design == "branches" and today.scaling.design == "runs"
    ratio = ladder_flops(branched.scaling, branched.train, split) / ladder_flops(today.scaling, today.train, split)
    assert 0.95 <= ratio <= 1.0
    # Each rung's branch and stable run are two points: 20 for the fit, 2 of them the held-out top rung's.
    assert sum(len(branches(branched.scaling, rung, SEQ_LEN)) + 1 for rung in plan(branched.scaling, branched.train, split)) == 20
