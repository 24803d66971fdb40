"""`ladder data` stopped by SIGTERM or SIGINT while its shards run: it exits within seconds, says so, leaves
the previous build's data/ and artifacts as they were and no process of its own behind."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ladder.workspace import Workspace
from tasks.data.corpus import example_inputs, fetch_example_corpus

pytestmark = pytest.mark.slow

# Far above what stopping takes (a second or two): not a performance claim, a bound on a hang.
STOP_SECONDS = 20


def _write_corpus(root: Path, megabytes: float, seed: int) -> Path:
    """One .jsonl file of records drawn from the example corpus's lines, many ``shard_bytes`` long."""
    lines = sorted({line.strip() for f in example_inputs(fetch_example_corpus())
                    for line in f.path.read_text(encoding="utf-8-sig").splitlines() if len(line.split()) >= 4})
    rng = random.Random(seed)
    root.mkdir(parents=True)
    with (root / "web.jsonl").open("w", encoding="utf-8") as fh:
        while fh.tell() < megabytes * 1e6:
            paragraphs = ["\n".join(rng.choices(lines, k=8)) for _ in range(3)]
            fh.write(json.dumps({"text": "\n\n".join(paragraphs)}) + "\n")
    return root


@pytest.fixture(scope="module")
def session_api(prefect_harness: None) -> dict[str, str]:
    """The runs report to the session's Prefect API: a temporary server per run would start (tens of
    seconds on a busy machine, sometimes past Prefect's own timeout) and stop within the signal's bound."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {**os.environ, "PREFECT_API_URL": str(client.api_url)}


def _ladder_data(corpus: Path) -> list[str]:
    ladder = str(Path(sys.executable).parent / "ladder")
    return [ladder, "data", "--set", f"data.input.input_dir={corpus}", "--set", "data.dask.workers=2",
            "--set", "data.dask.shard_bytes=500000"]


def _state(ws: Workspace) -> dict[str, object]:
    """What a stopped run must leave as it was: data/, data.dvc, and which artifacts exist."""
    data = {p.relative_to(ws.data).as_posix(): p.read_bytes() for p in sorted(ws.data.rglob("*")) if p.is_file()}
    return {"data": data, "data.dvc": ws.data_dvc.read_bytes(),
            "artifacts": sorted(p.name for p in (ws.artifacts / "data").iterdir() if not p.name.endswith(".lock"))}


@pytest.fixture(scope="module")
def built(module_workspace: Workspace, session_api: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace after one successful `ladder data`; returns a larger corpus to stop a run on."""
    small = _write_corpus(tmp_path_factory.mktemp("small") / "corpus", 0.2, seed=1)
    done = subprocess.run(_ladder_data(small), cwd=module_workspace.root, env=session_api, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return _write_corpus(tmp_path_factory.mktemp("big") / "corpus", 6, seed=2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_exits_promptly_and_leaves_the_previous_build(
    built: Path, module_workspace: Workspace, session_api: dict[str, str], signum: signal.Signals, tmp_path: Path
) -> None:
    ws = module_workspace
    before = _state(ws)
    log = tmp_path / "ladder.log"  # a file, not a pipe: a pipe nobody reads until the end can fill and stall the run
    with log.open("w") as out:
        # As a user's Ctrl-C reaches a command run in a terminal: a test runner started in the background
        # ignores SIGINT, its children inherit that, and the stage rightly leaves an ignored SIGINT ignored.
        proc = subprocess.Popen(_ladder_data(built), cwd=ws.root, env=session_api, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children: list[psutil.Process] = []
    try:
        # the stage has started its shards once the first one's documents are in its scratch directory
        deadline = time.monotonic() + 300
        while not any((ws.artifacts / "data").glob(".tmp-*.shards/shard-*.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before a shard finished"
            time.sleep(0.05)
        children.extend(psutil.Process(proc.pid).children(recursive=True))
        assert sum("multiprocessing" in " ".join(c.cmdline()) for c in children) >= 2  # the Dask workers
        proc.send_signal(signum)
        proc.wait(timeout=STOP_SECONDS)
    finally:  # nothing outlives a failed test
        for process in [proc, *children]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass

    output = log.read_text()
    assert proc.returncode == 128 + signum, output[-3000:]
    assert f"data stage stopped by {signum.name}" in output
    assert _state(ws) == before
    assert not [p.name for p in (ws.artifacts / "data").iterdir() if p.name.startswith(".tmp-")]
    assert not [p.name for p in ws.root.iterdir() if p.name.startswith(".data.")]

    def running() -> list[psutil.Process]:
        alive = []
        for child in children:
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                pass
        return alive

    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(), [" ".join(p.cmdline())[:200] for p in running()]
