import importlib.metadata
import json
import multiprocessing as mp
import pickle
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ladder.artifacts import (
    REHASH_ON_REUSE_MAX_BYTES,
    ArtifactMismatch,
    ArtifactStore,
    Code,
    StageOutput,
    code_fingerprint,
    stage_version,
)
from ladder.config import Section
from ladder.workspace import Workspace

# The code of the stand-in stage "s": any importable module will do.
CODE = Code(("ladder.config",))


class Cfg(Section):
    n: int = 1


def _writer(root: str, delay: float, marker: str) -> None:
    store = ArtifactStore(Path(root))

    def build(out: Path) -> StageOutput:
        time.sleep(delay)
        (out / "who.txt").write_text(marker)
        return StageOutput(counts={"docs": 1})

    store.run_stage("s", Cfg(), {"x": "1"}, build, code=CODE)


def test_rerun_with_same_inputs_and_config_is_a_cache_hit(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def build(out: Path) -> StageOutput:
        calls.append(1)
        (out / "a.txt").write_text("a")
        return StageOutput(counts={"n": 1}, metrics={"m": 0.5})

    first, cached1 = store.run_stage("s", Cfg(), {"x": "1"}, build, code=CODE)
    second, cached2 = store.run_stage("s", Cfg(), {"x": "1"}, build, code=CODE)
    assert (cached1, cached2, len(calls)) == (False, True, 1)
    assert first.path == second.path
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["files"]["a.txt"]["bytes"] == 1
    assert manifest["counts"] == {"n": 1} and manifest["config_hash"] == Cfg().hash()
    assert manifest["code"] == {"fingerprint": code_fingerprint(CODE), "packages": ["ladder.config"], "libraries": {}}
    # a changed input, config or code is a new version
    assert store.run_stage("s", Cfg(), {"x": "2"}, build, code=CODE)[0].version != first.version
    assert store.run_stage("s", Cfg(n=2), {"x": "1"}, build, code=CODE)[0].version != first.version
    assert store.run_stage("s", Cfg(), {"x": "1"}, build, code=Code(("ladder.workspace",)))[0].version != first.version


def test_failed_build_leaves_nothing_a_later_stage_would_trust(tmp_path):
    store = ArtifactStore(tmp_path)

    def crash(out: Path) -> StageOutput:
        (out / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.run_stage("s", Cfg(), {}, crash, code=CODE)
    version = stage_version("s", Cfg(), {}, CODE)
    assert store.lookup("s", version) is None
    assert not store.path("s", version).exists()
    assert [p.name for p in (tmp_path / "s").iterdir() if not p.name.startswith(".")] == []


def test_concurrent_runs_build_once(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(tmp_path), 1.0, m)) for m in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    art = ArtifactStore(tmp_path).lookup("s", stage_version("s", Cfg(), {"x": "1"}, CODE), verify=True)
    assert art is not None and (art.path / "who.txt").read_text() in {"a", "b"}
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_tampered_artifact_fails_verification(tmp_path):
    store = ArtifactStore(tmp_path)
    art, _ = store.run_stage("s", Cfg(), {}, lambda out: (out / "f").write_text("1") and StageOutput(), code=CODE)
    (art.path / "f").write_text("2")
    with pytest.raises(ValueError, match="does not match its manifest"):
        store.lookup("s", art.version, verify=True)


def _writes(name: str, calls: Counter) -> Callable[[Path], StageOutput]:
    """A stand-in builder that counts its calls and writes one file."""

    def build(out: Path) -> StageOutput:
        calls[name] += 1
        (out / f"{name}.txt").write_text(name)
        return StageOutput()

    return build


def test_editing_a_stages_code_rebuilds_it_while_a_stage_it_does_not_cover_stays_cached(
    tmp_path, monkeypatch, fresh_fingerprints
):
    src = tmp_path / "src"
    for package in ("ladder_probe_curate", "ladder_probe_tokenize"):
        (src / package).mkdir(parents=True)
        (src / package / "__init__.py").write_text("VOCAB = 1\n")
    monkeypatch.syspath_prepend(str(src))
    curate_code = Code(("ladder_probe_curate",))
    tokenize_code = Code(("ladder_probe_tokenize",), ("numpy",))
    store, calls = ArtifactStore(tmp_path / "artifacts"), Counter()

    def run() -> tuple[tuple[str, bool], tuple[str, bool]]:
        data, data_cached = store.run_stage("data", Cfg(), {}, _writes("data", calls), code=curate_code)
        tok, tok_cached = store.run_stage("tokenizer", Cfg(), {"data": data.version}, _writes("tok", calls), code=tokenize_code)
        return (data.version, data_cached), (tok.version, tok_cached)

    (data_v, _), (tok_v, _) = run()
    assert run() == ((data_v, True), (tok_v, True))
    before = code_fingerprint(tokenize_code)
    # Neither bytecode caches nor hidden files are code: they come and go by themselves.
    (src / "ladder_probe_tokenize" / "__pycache__").mkdir()
    (src / "ladder_probe_tokenize" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (src / "ladder_probe_tokenize" / ".__init__.py.swp").write_bytes(b"\0")
    code_fingerprint.cache_clear()
    assert code_fingerprint(tokenize_code) == before

    (src / "ladder_probe_tokenize" / "__init__.py").write_text("VOCAB = 2  # the fix\n")
    assert code_fingerprint(tokenize_code) == before  # computed once per process, until the cache is cleared
    code_fingerprint.cache_clear()
    (data_again, data_cached), (tok_again, tok_cached) = run()
    assert (data_again, data_cached) == (data_v, True)
    assert tok_again != tok_v and not tok_cached and calls == {"data": 1, "tok": 2}

    # Package data is code too (task templates, profiles).
    fixed = code_fingerprint(tokenize_code)
    (src / "ladder_probe_tokenize" / "templates").mkdir()
    (src / "ladder_probe_tokenize" / "templates" / "task.yaml").write_text("metric: acc\n")
    code_fingerprint.cache_clear()
    assert code_fingerprint(tokenize_code) != fixed
    manifest = store.lookup("tokenizer", tok_again).manifest
    assert manifest["code"]["packages"] == ["ladder_probe_tokenize"]
    assert manifest["code"]["libraries"] == {"numpy": importlib.metadata.version("numpy")}


def test_a_library_upgrade_is_a_code_change(monkeypatch, fresh_fingerprints):
    code = Code(("ladder.config",), ("numpy",))
    before = code_fingerprint(code)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "999.0" if name == "numpy" else real(name))
    code_fingerprint.cache_clear()
    assert code_fingerprint(code) != before


def test_a_code_that_cannot_be_found_says_what_to_fix(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ValueError, match="no importable package or module 'ladder_no_such_package'"):
        store.run_stage("s", Cfg(), {}, _writes("s", Counter()), code=Code(("ladder_no_such_package",)))
    with pytest.raises(ValueError, match="'no-such-library' in a stage's Code is not installed"):
        store.run_stage("s", Cfg(), {}, _writes("s", Counter()), code=Code(("ladder.config",), ("no-such-library",)))
    for wrong in ("tasks.data", ["tasks.data"]):
        with pytest.raises(ValueError, match=r"write \('tasks.data',\)"):
            Code(wrong)  # type: ignore[arg-type]


def _small_and_large(out: Path) -> StageOutput:
    (out / "counts.json").write_text('{"docs": 12}')
    (out / "model").mkdir()
    (out / "model" / "weights.bin").write_bytes(bytes(REHASH_ON_REUSE_MAX_BYTES + 1))
    return StageOutput()


def _flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda art: _flip_byte(art.path / "counts.json", 3), "counts.json: sha256 differs"),
        (lambda art: (art.path / "model" / "weights.bin").write_bytes(b"\0" * 10), "model/weights.bin: 10 bytes"),
        (lambda art: (art.path / "counts.json").unlink(), "counts.json: missing"),
        (lambda art: (art.path / "model" / "extra.txt").write_text("x"), "model/extra.txt: not in the manifest"),
    ],
    ids=["flipped-byte", "truncated", "deleted", "added"],
)
def test_a_tampered_artifact_is_never_reused(tmp_path, tamper, named):
    store, calls = ArtifactStore(tmp_path), Counter()

    def build(out: Path) -> StageOutput:
        calls["s"] += 1
        return _small_and_large(out)

    art, _ = store.run_stage("s", Cfg(), {}, build, code=CODE)
    tamper(art)
    with pytest.raises(ArtifactMismatch, match="does not match its manifest") as err:
        store.run_stage("s", Cfg(), {}, build, code=CODE)
    message = str(err.value)
    assert named in message and str(art.path) in message and "ladder verify" in message
    assert len(err.value.differences) == 1 and err.value.differences[0].startswith(named)
    with pytest.raises(ArtifactMismatch):
        store.latest("s")
    assert calls["s"] == 1
    (found,) = store.verify().values()
    assert len(found) == 1 and found[0].startswith(named)
    # Prefect pickles a task's exception: it must come back whole.
    assert str(pickle.loads(pickle.dumps(err.value))) == message


def test_a_large_file_changed_in_place_is_caught_by_the_full_verification(tmp_path):
    store = ArtifactStore(tmp_path)
    art, _ = store.run_stage("s", Cfg(), {}, _small_and_large, code=CODE)
    other, _ = store.run_stage("s", Cfg(n=2), {}, _small_and_large, code=CODE)
    _flip_byte(art.path / "model" / "weights.bin", 1000)
    # Reuse compares a large file's size only: re-hashing weights on every run would cost more than the run saves.
    assert store.run_stage("s", Cfg(), {}, _small_and_large, code=CODE)[1]
    assert store.verify("s") == {art.path: ["model/weights.bin: sha256 differs from the manifest's"], other.path: []}
    with pytest.raises(ArtifactMismatch, match="weights.bin"):
        store.lookup("s", art.version, verify=True)
    with pytest.raises(ValueError, match="no artifacts of stage 'nope'.*'s'"):
        store.verify("nope")


def test_ladder_verify_names_each_differing_file_and_exits_1(workspace: Workspace):
    from app.cli import app

    art, _ = workspace.store().run_stage("s", Cfg(), {}, _small_and_large, code=CODE)
    assert json.loads((art.path / "manifest.json").read_text())["git_commit"] == workspace.git_commit()
    clean = CliRunner().invoke(app, ["verify"])
    assert clean.exit_code == 0, clean.output
    assert f"ok {art.path}" in clean.output and "artifacts checked 1, 0 differ" in clean.output

    _flip_byte(art.path / "model" / "weights.bin", 5)
    tampered = CliRunner().invoke(app, ["verify", "s"])
    assert tampered.exit_code == 1
    assert f"differs {art.path}" in tampered.output
    assert "model/weights.bin: sha256 differs" in tampered.output and "1 differ" in tampered.output

    unknown = CliRunner().invoke(app, ["verify", "nope"])
    assert unknown.exit_code == 1 and "no artifacts of stage 'nope'" in unknown.output
