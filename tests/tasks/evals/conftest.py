"""Small held-out splits and a suite config sized to build in a second."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from eval_corpus import write_curated

SIZES = {"train": 120, "validation": 24, "test": 24}


@pytest.fixture
def curated(tmp_path: Path) -> Path:
    """A fresh curated dataset (tests may add to its train split)."""
    data_dir = tmp_path / "data"
    write_curated(data_dir, SIZES)
    return data_dir


@pytest.fixture
def mlflow_store(tmp_path: Path) -> Iterator[Path]:
    """A workspace root at ``tmp_path`` with its own SQLite MLflow store; the environment is restored afterwards.

    The command line's setup and ``configure`` change the environment, so the whole of it is saved.
    """
    saved = dict(os.environ)
    os.environ.update({
        "LADDER_ROOT": str(tmp_path),
        # No port answers there: nothing may adopt servers other processes started.
        "LADDER_PREFECT_URL": "http://127.0.0.1:9",
        "LADDER_MLFLOW_URL": "http://127.0.0.1:9",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    })
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        yield tmp_path
    finally:
        os.environ.clear()
        os.environ.update(saved)
