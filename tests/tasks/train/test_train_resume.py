"""Exact resume: after SIGKILL, past a corrupted newest checkpoint; the deterministic-kernels switch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.train.checkpoint import MODEL, CheckpointStore
from tasks.train.engine import Dist, deterministic_algorithms
from tasks.train.launch import REPO, child_env, launch_command, run_training, write_config
from tasks.train.loop import train
from train_fixtures import tiny_config


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def _store(run_dir: Path) -> CheckpointStore:
    return CheckpointStore(run_dir / "checkpoints", Dist(0, 1, 0, torch.device("cpu")))


def test_sigkill_mid_run_then_resume_ends_with_the_uninterrupted_weights(shards_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(max_steps=300, checkpoint={"every_steps": 10, "keep_last": 2})
    control = train(cfg, shards_root / "train", shards_root / "validation", tmp_path / "control")

    killed = tmp_path / "killed"
    config_path = write_config(cfg, killed, shards_root / "train")
    command = launch_command(cfg, config_path, killed, shards_root / "train", shards_root / "validation")
    proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(c.step >= 30 for c in _store(killed).all()):
        assert proc.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint at step 30 within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists(), "the run finished before SIGKILL: nothing was resumed"

    resumed = run_training(cfg, killed, shards_root / "train", shards_root / "validation")
    assert resumed["resumed_from"] is not None
    assert resumed["steps"] == control["steps"] == 300
    _assert_equal(_weights(killed), _weights(tmp_path / "control"))
    assert resumed["final_val_loss"] == control["final_val_loss"]


def test_corrupted_newest_checkpoint_is_skipped_for_the_previous_one(shards_root: Path, tmp_path: Path) -> None:
    # bf16 autocast here: resume is exact in mixed precision too (the weights stay fp32).
    cfg = tiny_config(max_steps=40, precision="bf16", checkpoint={"every_steps": 10, "keep_last": 3})
    run_dir = tmp_path / "run"
    first = train(cfg, shards_root / "train", shards_root / "validation", run_dir)
    reference = _weights(run_dir)
    newest = _store(run_dir).all()[-1]
    assert newest.step == 40
    weights_file = newest.path / MODEL
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])  # truncated

    again = train(cfg, shards_root / "train", shards_root / "validation", run_dir)
    assert again["skipped_checkpoints"] == [
        {"checkpoint": newest.path.name, "problem": pytest.approx(again["skipped_checkpoints"][0]["problem"])}
    ]
    assert "truncated" in again["skipped_checkpoints"][0]["problem"]
    assert again["resumed_from"].endswith("step-0000030")
    assert again["steps"] == first["steps"]
    _assert_equal(_weights(run_dir), reference)


def test_checksums_catch_a_flipped_byte(shards_root: Path, tmp_path: Path) -> None:
    train(tiny_config(max_steps=10), shards_root / "train", shards_root / "validation", tmp_path)
    ckpt = _store(tmp_path).all()[-1]
    assert CheckpointStore.verify(ckpt) is None
    optimizer_file = ckpt.path / "optimizer-rank0.pt"
    data = bytearray(optimizer_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer_file.write_bytes(bytes(data))
    assert CheckpointStore.verify(ckpt) == "optimizer-rank0.pt does not match its crc32"


def test_the_deterministic_switch_holds_in_the_training_process_and_is_undone_after(shards_root: Path, tmp_path: Path) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    on = train(tiny_config(max_steps=2, deterministic=True), shards_root / "train", shards_root / "validation", tmp_path / "on")
    assert on["deterministic_algorithms"] is True
    assert not torch.are_deterministic_algorithms_enabled(), "an in-process run leaves its caller's setting as it was"
    off = train(tiny_config(max_steps=2), shards_root / "train", shards_root / "validation", tmp_path / "off")
    assert off["deterministic_algorithms"] is False
    # What a GPU process gets besides (set here without a GPU; that it makes GPU runs repeat is not tested here).
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    with deterministic_algorithms(True, cuda=True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == workspace and not torch.are_deterministic_algorithms_enabled()
