"""One-process runs forked from the training fork server: each its own environment, threads and log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.train.launch import LOG_FILE, TrainingFailed, run_training
from tasks.train.perf import peak_cache
from train_fixtures import tiny_config


def test_each_forked_run_takes_its_own_environment_and_thread_count(
    shards_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The machine peak's cache is found through XDG_CACHE_HOME and keyed by torch's thread count,
    # both read in the training process: the server was started with neither of these.
    for threads in (1, 2):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"cache-{threads}"))
        cfg = tiny_config(max_steps=2, peak_tflops=None, threads_per_process=threads)
        run_training(cfg, tmp_path / f"run-{threads}", shards_root / "train", shards_root / "validation")
        keys = json.loads(peak_cache().read_text())
        assert [key.split("|")[3] for key in keys] == [f"threads={threads}"]


def test_a_failed_run_reports_its_traceback_from_its_log_and_the_next_run_trains(shards_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(max_steps=2)
    with pytest.raises(TrainingFailed, match="exited with code 1") as failed:
        run_training(cfg, tmp_path / "failed", shards_root / "train", tmp_path / "no-such-split")
    assert "no-such-split" in str(failed.value)
    assert "Traceback" in (tmp_path / "failed" / LOG_FILE).read_text()
    assert run_training(cfg, tmp_path / "next", shards_root / "train", shards_root / "validation")["steps"] == 2
