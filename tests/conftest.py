"""Shared fixtures: an isolated ladder workspace (git + DVC + local stores) and a Prefect test harness.

Tests never reach a hub: the offline switches are set before anything imports transformers or datasets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ladder.runtime import configure
from ladder.workspace import Workspace
from tasks.train.launch import DIST_ENV

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# Each module's seconds on the CI's kind of machine (2 cores), longest first; `--write-durations` records them.
DURATIONS = Path(__file__).with_name("durations.json")

# No port answers here, so `configure` never adopts a Prefect or MLflow server another process started.
UNUSED_URL = "http://127.0.0.1:9"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-durations", action="store_true", help=f"record each module's seconds in {DURATIONS.name}")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules longest first. `make test` gives each module to one of two workers (--dist loadfile, in
    this order: --no-loadscope-reorder); a long module handed out last keeps one worker busy alone
    after the other has finished. The sort is stable: a module's tests keep their order."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -seconds.get(_module(item.nodeid), 0.0))


_spent: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _spent[_module(report.nodeid)] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session: pytest.Session) -> None:
    # The controller sees every worker's reports; a worker sees only its own.
    if session.config.getoption("write_durations") and not hasattr(session.config, "workerinput"):
        ranked = sorted(_spent.items(), key=lambda kv: -kv[1])
        DURATIONS.write_text(json.dumps({module: round(s, 1) for module, s in ranked}, indent=1) + "\n")


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})


@contextmanager
def _isolated_workspace(root: Path) -> Iterator[Workspace]:
    """A fresh workspace at ``root``: a git repository with DVC and a local default remote, stores configured.

    ``LADDER_ROOT`` points at it; every environment variable is restored afterwards.
    """
    ws = Workspace(root)
    ws.root.mkdir()
    _run(["git", "init", "-q"], ws.root)
    _run(["git", "config", "user.email", "test@ladder.invalid"], ws.root)
    _run(["git", "config", "user.name", "ladder tests"], ws.root)
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([dvc, "init", "-q"], ws.root)
    _run([dvc, "remote", "add", "-d", "local", str(ws.dvc_remote)], ws.root)
    saved = dict(os.environ)
    # A one-process group an earlier test made in this process leaves RANK and the rest behind;
    # a process started from here (a served deployment) would take them for a cluster to join
    # (accelerate does, under lm-eval).
    for name in DIST_ENV:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "LADDER_ROOT": str(ws.root),
            "LADDER_PREFECT_URL": UNUSED_URL,
            "LADDER_MLFLOW_URL": UNUSED_URL,
            "MLFLOW_TRACKING_URI": ws.mlflow_db_uri,
        }
    )
    configure(ws)
    try:
        yield ws
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh workspace for one test (see ``_isolated_workspace``)."""
    with _isolated_workspace(tmp_path / "ws") as ws:
        yield ws


@pytest.fixture(scope="module")
def module_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """One fresh workspace shared by a module's tests, for runs too slow to repeat per test (the pipeline's)."""
    with _isolated_workspace(tmp_path_factory.mktemp("module") / "ws") as ws:
        yield ws


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API and database for the whole session (flows run against it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture
def fresh_fingerprints() -> Iterator[None]:
    """Fingerprints a test computes over edited sources or patched library versions are forgotten after it."""
    from ladder.artifacts import code_fingerprint

    code_fingerprint.cache_clear()
    yield
    code_fingerprint.cache_clear()


@pytest.fixture
def two_workspaces(tmp_path: Path) -> Iterator[tuple[Workspace, Workspace]]:
    """Workspaces A and B on one DVC remote (A's: B's default remote points at it), as two colleagues'; A's environment is active."""
    with _isolated_workspace(tmp_path / "b") as b, _isolated_workspace(tmp_path / "a") as a:
        _run([str(Path(sys.executable).parent / "dvc"), "remote", "add", "-f", "-d", "local", str(a.dvc_remote)], b.root)
        yield a, b
