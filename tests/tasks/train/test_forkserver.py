"""One-process runs forked from the training fork server: each its own environment, threads and log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.train.callbacks import METRICS_FILE
from tasks.train.launch import LOG_FILE, REPO, TrainingFailed, child_env, run_training
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


def test_a_run_stops_when_the_process_that_started_it_dies(shards_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from train_fixtures import tiny_config; from tasks.train.launch import run_training; "
        "run_training(tiny_config(max_steps=100_000, log_every=1), Path(sys.argv[2]), "
        "Path(sys.argv[3]) / 'train', Path(sys.argv[3]) / 'validation')"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(run_dir), str(shards_root)],
                              cwd=REPO, env=child_env())
    metrics = run_dir / METRICS_FILE
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        assert parent.poll() is None and time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.1)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # Its waiter sees the parent's end of the connection close and stops the run: the log stops growing.
    deadline = time.monotonic() + 60
    size = -1
    while size != (size := metrics.stat().st_size):
        assert time.monotonic() < deadline, "the run kept training after its parent died"
        time.sleep(2)
    assert not (run_dir / "result.json").exists()
