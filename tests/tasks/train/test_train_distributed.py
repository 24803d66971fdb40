"""Two processes (torchrun, gloo, DeepSpeed ZeRO-2) train the same global batches as one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.train.launch import run_training
from tasks.train.loop import train
from train_fixtures import tiny_config

STEPS = 25


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_two_process_zero2_matches_one_process(shards_root: Path, tmp_path: Path) -> None:
    common = {"max_steps": STEPS, "zero_stage": 2, "log_every": 1, "micro_batch_size": 4, "checkpoint": {"every_steps": 10}}
    two = run_training(tiny_config(nproc_per_node=2, **common), tmp_path / "two", shards_root / "train", shards_root / "validation")
    one = train(tiny_config(nproc_per_node=1, **common), shards_root / "train", shards_root / "validation", tmp_path / "one")

    assert two["world_size"] == 2 and one["world_size"] == 1
    curve_two, curve_one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert len(curve_two) == len(curve_one) == STEPS
    assert curve_two == pytest.approx(curve_one, rel=1e-2)
    assert curve_two[-1] < curve_two[0] - 0.5  # it learned
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=1e-2)
    # the validation loss's noise is summed across processes like the loss: the same micro-batches, the same error
    assert 0 < one["final_val_loss_stderr"] < 0.1 * one["final_val_loss"]
    assert two["final_val_loss_stderr"] == pytest.approx(one["final_val_loss_stderr"], rel=2e-2)
    # ZeRO-2 partitions the optimizer state: one file per rank in every checkpoint.
    newest = sorted((tmp_path / "two" / "checkpoints").glob("ckpt-*"))[-1]
    assert {p.name for p in newest.glob("optimizer-rank*.pt")} == {"optimizer-rank0.pt", "optimizer-rank1.pt"}
