import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from ladder.artifacts import ArtifactStore, StageOutput, stage_version
from ladder.config import Section


class Cfg(Section):
    n: int = 1


def _writer(root: str, delay: float, marker: str) -> None:
    store = ArtifactStore(Path(root))

    def build(out: Path) -> StageOutput:
        time.sleep(delay)
        (out / "who.txt").write_text(marker)
        return StageOutput(counts={"docs": 1})

    store.run_stage("s", Cfg(), {"x": "1"}, build)


def test_rerun_with_same_inputs_and_config_is_a_cache_hit(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def build(out: Path) -> StageOutput:
        calls.append(1)
        (out / "a.txt").write_text("a")
        return StageOutput(counts={"n": 1}, metrics={"m": 0.5})

    first, cached1 = store.run_stage("s", Cfg(), {"x": "1"}, build)
    second, cached2 = store.run_stage("s", Cfg(), {"x": "1"}, build)
    assert (cached1, cached2, len(calls)) == (False, True, 1)
    assert first.path == second.path
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["files"]["a.txt"]["bytes"] == 1
    assert manifest["counts"] == {"n": 1} and manifest["config_hash"] == Cfg().hash()
    # a changed input or config is a new version
    assert store.run_stage("s", Cfg(), {"x": "2"}, build)[0].version != first.version
    assert store.run_stage("s", Cfg(n=2), {"x": "1"}, build)[0].version != first.version


def test_failed_build_leaves_nothing_a_later_stage_would_trust(tmp_path):
    store = ArtifactStore(tmp_path)

    def crash(out: Path) -> StageOutput:
        (out / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.run_stage("s", Cfg(), {}, crash)
    version = stage_version("s", Cfg(), {})
    assert store.lookup("s", version) is None
    assert not store.path("s", version).exists()
    assert [p.name for p in (tmp_path / "s").iterdir() if not p.name.startswith(".")] == []


def test_concurrent_runs_build_once(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(tmp_path), 1.0, m)) for m in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    art = ArtifactStore(tmp_path).lookup("s", stage_version("s", Cfg(), {"x": "1"}), verify=True)
    assert art is not None and (art.path / "who.txt").read_text() in {"a", "b"}
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_tampered_artifact_fails_verification(tmp_path):
    store = ArtifactStore(tmp_path)
    art, _ = store.run_stage("s", Cfg(), {}, lambda out: (out / "f").write_text("1") and StageOutput())
    (art.path / "f").write_text("2")
    with pytest.raises(ValueError, match="does not match its manifest"):
        store.lookup("s", art.version, verify=True)
