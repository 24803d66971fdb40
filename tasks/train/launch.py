"""Entry point of every training process, and the launcher that starts 1 or N of them.

``python -m tasks.train.launch --config train.yaml --out RUN_DIR --train-shards DIR
--val-shards DIR`` runs one process. ``run_training`` forks that process from the training fork
server (``tasks.train.forkserver``) on a machine without CUDA, starts it fresh on one with CUDA,
or starts N under ``torchrun --standalone --nproc_per_node N``, so the same code trains on 1 or N
processes (and on a cluster, where infra/ supplies the launcher). Exit code 3 means the spike
guard's retry budget ran out; ``failure.json`` in the run directory holds the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from ladder.config import build
from tasks.train import forkserver
from tasks.train.config import TrainConfig

EXIT_SPIKE_BUDGET = 3
FAILURE = "failure.json"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
REPO = Path(__file__).resolve().parents[2]
# Set by torchrun for its children; a launch from inside another job must not inherit them.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


class TrainingFailed(RuntimeError):
    """The training processes failed; the message says why (the spike report, or the log's tail)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.train.launch", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="YAML of the resolved train section.")
    parser.add_argument("--out", required=True, type=Path, help="Run directory (checkpoints, metrics, model).")
    parser.add_argument("--train-shards", required=True, type=Path, help="Packed training split.")
    parser.add_argument("--val-shards", required=True, type=Path, help="Packed validation split.")
    parser.add_argument("--tokenizer", type=Path, default=None, help="HF tokenizer directory saved with the model.")
    parser.add_argument("--mlflow-run-id", default=None, help="Log metrics into this MLflow run (rank 0).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = build(TrainConfig, yaml.safe_load(args.config.read_text()) or {}, source=str(args.config))

    from tasks.train.loop import train
    from tasks.train.spike import RetryBudgetExhausted

    try:
        train(cfg, args.train_shards, args.val_shards, args.out, args.tokenizer, args.mlflow_run_id)
    except RetryBudgetExhausted as err:
        if os.environ.get("RANK", "0") == "0":
            from tasks.train.checkpoint import write_json_atomic

            write_json_atomic(args.out / FAILURE, {"kind": "spike_retry_budget", "report": str(err), "events": err.events})
            logging.getLogger(__name__).error("%s", err)
        return EXIT_SPIKE_BUDGET
    return 0


def launch_args(config_path: Path, run_dir: Path, train_shards: Path, val_shards: Path,
                tokenizer_dir: Path | None = None, mlflow_run_id: str | None = None) -> list[str]:
    """The arguments of ``main`` for one run."""
    args = ["--config", str(config_path), "--out", str(run_dir), "--train-shards", str(train_shards),
            "--val-shards", str(val_shards)]
    if tokenizer_dir is not None:
        args += ["--tokenizer", str(tokenizer_dir)]
    if mlflow_run_id:
        args += ["--mlflow-run-id", mlflow_run_id]
    return args


def launch_command(cfg: TrainConfig, config_path: Path, run_dir: Path, train_shards: Path, val_shards: Path,
                   tokenizer_dir: Path | None = None, mlflow_run_id: str | None = None) -> list[str]:
    """The command line that trains ``cfg`` on ``cfg.nproc_per_node`` fresh processes."""
    args = ["-m", "tasks.train.launch", *launch_args(config_path, run_dir, train_shards, val_shards, tokenizer_dir, mlflow_run_id)]
    if cfg.nproc_per_node == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cfg.nproc_per_node), *args]


def child_env() -> dict[str, str]:
    """This process's environment for the training processes, without any process-group variables."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def write_config(cfg: TrainConfig, run_dir: Path, train_shards: Path) -> Path:
    """``run_dir/config.yaml``: ``cfg`` resolved against the shards, as the processes will read it."""
    from tasks.train.continued import resolve
    from tasks.train.shards import PackedShards

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    path.write_text(resolve(cfg, PackedShards(train_shards)).to_yaml())
    return path


def run_training(
    cfg: TrainConfig,
    run_dir: Path,
    train_shards: Path,
    val_shards: Path,
    tokenizer_dir: Path | None = None,
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Train in child processes (resuming whatever ``run_dir`` holds); returns ``result.json``.

    Output goes to ``run_dir/train.log``. Raises ``TrainingFailed`` with the spike report when
    the retry budget ran out, or with the log's last lines on any other failure.
    """
    import torch

    from tasks.train.loop import RESULT

    config_path = write_config(cfg, run_dir, train_shards)
    (run_dir / FAILURE).unlink(missing_ok=True)
    env = child_env()
    # Always set: torchrun gives each process one thread when it finds none, and a count this
    # process inherited (a Dask nanny's, for one) is not this run's choice.
    threads = cfg.threads_per_process or max(1, (os.cpu_count() or 1) // cfg.nproc_per_node)
    env["OMP_NUM_THREADS"] = str(threads)
    log = run_dir / LOG_FILE
    # CUDA does not survive a fork of a process that has touched it, and importing DeepSpeed (or
    # transformers) asks torch for devices: on a GPU machine each run starts fresh, where the
    # imports are small against the run anyway.
    if cfg.nproc_per_node == 1 and not torch.cuda.is_available():
        args = launch_args(config_path, run_dir, train_shards, val_shards, tokenizer_dir, mlflow_run_id)
        code = forkserver.SERVER.run(args, cwd=REPO, env=env, log=log, threads=threads)
    else:
        command = launch_command(cfg, config_path, run_dir, train_shards, val_shards, tokenizer_dir, mlflow_run_id)
        with log.open("ab") as log_fh:
            code = subprocess.run(command, cwd=REPO, env=env, stdout=log_fh, stderr=subprocess.STDOUT).returncode
    if code == EXIT_SPIKE_BUDGET and (run_dir / FAILURE).exists():
        report = json.loads((run_dir / FAILURE).read_text())
        raise TrainingFailed(report["report"], report)
    if code != 0:
        with log.open(encoding="utf-8", errors="replace") as lines:
            tail = "".join(deque(lines, maxlen=40))
        raise TrainingFailed(f"training exited with code {code}; last lines of {log}:\n{tail}")
    return json.loads((run_dir / RESULT).read_text())


if __name__ == "__main__":
    sys.exit(main())
