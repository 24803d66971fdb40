"""SIGKILL anywhere, resume, and end bit-identical to the run that was never interrupted (CPU)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.train.callbacks import METRICS_FILE
from tasks.train.launch import REPO, child_env, launch_args, run_training, write_config
from tasks.train.loop import EVIDENCE_DIR, MODEL_DIR, train
from train_fixtures import tiny_config

KILL_AT = Path(__file__).with_name("kill_at.py")


def _losses(run_dir: Path) -> dict[int, float]:
    """The loss of every step as the run finally trained it (a step redone after a rollback or resume logs again)."""
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _rollbacks(run_dir: Path) -> dict[int, int]:
    """Spike step by attempt, as the metrics file (the plot's source) records them; a rollback redone
    after a crash before its ledger entry is recorded again, never lost."""
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return {row["attempt"]: row["spike"]["step"] for row in rows if row.get("event") == "rollback"}


def _evidence(run_dir: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((run_dir / EVIDENCE_DIR).iterdir())}


def _kill(run_dir: Path, args: list[str], point: str, n: int) -> None:
    proc = subprocess.run([sys.executable, str(KILL_AT), point, str(n), *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True)
    assert proc.returncode == -9, f"not killed at {point} {n} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert not (run_dir / "result.json").exists()


@pytest.mark.slow
def test_sigkill_at_random_steps_in_a_checkpoint_write_and_around_rollbacks_resumes_bit_identical(
    shards_root: Path, tmp_path: Path
) -> None:
    # Two rollbacks: lr x100 at step 10 wrecks the step-10 checkpoint (spike at 11, back to 5); a NaN at 18 (back to 15).
    cfg = tiny_config(max_steps=30, log_every=1, faults=[{"step": 10, "kind": "lr_multiply"}, {"step": 18, "kind": "nan_loss"}],
                      spike_guard={"warmup_steps": 5}, checkpoint={"every_steps": 5, "keep_last": 2})
    control_dir = tmp_path / "control"
    control = train(cfg, shards_root / "train", shards_root / "validation", control_dir)
    assert [(e["spike"]["step"], e["rollback_step"]) for e in control["spike_events"]] == [(11, 5), (18, 15)]

    run_dir = tmp_path / "killed"
    config_path = write_config(cfg, run_dir, shards_root / "train")
    args = launch_args(config_path, run_dir, shards_root / "train", shards_root / "validation")
    rng = random.Random(13)
    kills = [
        ("step", rng.randint(2, 9)),
        ("checkpoint", 1),  # the first this process writes, half done
        ("discard", 1),  # the first rollback, halfway: the resume must redo it
        ("ledger", 1),  # the first rollback again, just committed: the resume must not redo it
        ("rollback", 1),  # the second rollback is complete, nothing trained since
        ("step", rng.randint(19, 29)),
    ]
    for point, n in kills:
        _kill(run_dir, args, point, n)
    resumed = run_training(cfg, run_dir, shards_root / "train", shards_root / "validation")

    assert resumed["resumed_from"] is not None and resumed["steps"] == control["steps"]
    final = load_file(run_dir / MODEL_DIR / "model.safetensors")
    reference = load_file(control_dir / MODEL_DIR / "model.safetensors")
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[name], reference[name]) for name in reference)
    assert resumed["final_val_loss"] == control["final_val_loss"]
    assert _losses(run_dir) == _losses(control_dir)
    # As JSON: the NaN spike's loss is not equal to itself.
    assert json.dumps(resumed["spike_events"], sort_keys=True) == json.dumps(control["spike_events"], sort_keys=True)
    assert _evidence(run_dir) == _evidence(control_dir), "each rollback's evidence survives a kill"
    assert _rollbacks(run_dir) == _rollbacks(control_dir) == {1: 11, 2: 18}
