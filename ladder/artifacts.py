"""The stage contract: one artifact directory per (stage, inputs, config), with a manifest.

A stage's version is the hash of its name, its resolved config, the versions of its inputs
and the fingerprint of its ``Code`` (the sources of the packages that build it and the
versions of the libraries that shape it), so a fix to a stage's code builds a new version
instead of reusing one the old code made. ``run_stage`` returns the existing artifact when
that version is already complete (a cache hit that does no work); otherwise it builds the
artifact in a temporary directory under an exclusive lock and renames it into place only when
the manifest is written. A crash leaves only a temporary directory that no reader trusts; a
concurrent run waits on the lock and then finds the finished artifact.

An artifact is checked against its manifest whenever it is found: every file present with its
recorded size, the small ones re-hashed. One that differs raises ``ArtifactMismatch`` instead
of being reused; ``ArtifactStore.verify`` (``ladder verify``) re-hashes every file.

Layout: ``<store>/<stage>/<version>/`` holding the stage's files and ``manifest.json``.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladder.config import Section, content_hash

MANIFEST = "manifest.json"
# Files up to this size are re-hashed each time an artifact is reused: together they cost
# milliseconds, and they are the ones people edit by hand (JSON, JSONL, YAML, CSV). Larger ones
# (weights, token shards) are checked by size there, and re-hashed by `ladder verify`.
REHASH_ON_REUSE_MAX_BYTES = 1 << 20
# Not sources: bytecode caches and hidden files (editor swap files, .DS_Store) come and go
# without the code changing.
_NOT_SOURCE_DIRS = {"__pycache__"}
_NOT_SOURCE_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class Code:
    """The code that builds a stage's output; each stage declares one next to its name.

    A change to any of it makes a new version of the stage, so an artifact is never reused
    after the code that made it was fixed.
    """

    packages: tuple[str, ...]
    """Dotted names of the packages (every file under them, package data included) or single
    modules whose sources build the output, e.g. ``("tasks.tokenizer", "tasks.data.document")``."""
    libraries: tuple[str, ...] = ()
    """Installed distributions whose versions change what the output holds (numbers, models, tokens;
    not merely how a plot renders), e.g. ``("tokenizers",)``."""

    def __post_init__(self) -> None:
        for name, value in (("packages", self.packages), ("libraries", self.libraries)):
            if not isinstance(value, tuple):  # a str would be read as its letters, a list cannot be hashed
                names = (value,) if isinstance(value, str) else tuple(value)
                raise ValueError(f"Code.{name} is a tuple of names, not {value!r}: write {names!r}")
        if not self.packages:
            raise ValueError("Code needs at least one package: name the modules that build the stage's output")


def source_files(name: str) -> dict[str, Path]:
    """``path relative to the import root -> file`` of a package (every file under it) or a module."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise ValueError(f"no importable package or module {name!r} in a stage's Code: fix the name, or install the project")
    prefix = name.replace(".", "/")
    if spec.submodule_search_locations is None:
        origin = Path(spec.origin or "")
        if not origin.is_file():
            raise ValueError(f"module {name!r} in a stage's Code has no source file: name a package or a .py module")
        return {prefix + origin.suffix: origin}
    files = {}
    for location in spec.submodule_search_locations:
        for rel, path in _files(Path(location)).items():
            parts = Path(rel).parts
            hidden = any(part.startswith(".") for part in parts)
            if not hidden and not _NOT_SOURCE_DIRS.intersection(parts) and path.suffix not in _NOT_SOURCE_SUFFIXES:
                files[f"{prefix}/{rel}"] = path
    return files


def library_versions(libraries: Iterable[str]) -> dict[str, str]:
    """``distribution -> installed version`` of each library."""
    versions = {}
    for name in libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(
                f"library {name!r} in a stage's Code is not installed: run `make install`, or fix the name"
            ) from None
    return versions


@functools.cache
def code_fingerprint(code: Code) -> str:
    """A hash of every source file of ``code.packages`` and the version of each of ``code.libraries``.

    Computed once per process and ``Code``: sources do not change under a running pipeline,
    and re-hashing them at every stage call would be wasted work. A test that edits sources
    calls ``code_fingerprint.cache_clear()``.
    """
    sources = {}
    for name in code.packages:
        sources.update({rel: file_sha256(path) for rel, path in source_files(name).items()})
    return content_hash({"sources": sorted(sources.items()), "libraries": library_versions(code.libraries)})


class ArtifactMismatch(ValueError):
    """An artifact's files differ from its manifest: edited or corrupted after it was built."""

    def __init__(self, path: Path, differences: list[str]) -> None:
        self.path = path
        self.differences = differences
        super().__init__(
            f"artifact {path} does not match its manifest (edited or corrupted), so it is not reused: "
            f"{'; '.join(differences)}. Delete {path} to rebuild it, or run `ladder verify` to check every artifact"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles a failed task's exception; the default would call __init__ with the message alone.
        return type(self), (self.path, self.differences)


@dataclass
class StageOutput:
    """What a stage's builder reports besides its files."""

    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactRef:
    """What one stage hands the next: a stage output named by its version, never by its path.

    The store resolves it where the consumer runs, so a reference made on one machine names the
    same bytes on another, and lineage and stage inputs record it as it is.
    """

    stage: str
    version: str

    def __str__(self) -> str:
        return f"{self.stage}/{self.version}"


@dataclass(frozen=True)
class Artifact:
    """A complete, verified stage output."""

    stage: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.stage, self.version)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]


def stage_version(stage: str, config: Section, inputs: dict[str, str], code: Code) -> str:
    """The version of a stage's output: a hash of what determines it, nothing else."""
    return content_hash(
        {"stage": stage, "config": config.to_dict(), "inputs": inputs, "code": code_fingerprint(code)}
    )


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, keys sorted, text as is (not \\u-escaped); the parent directory is made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> dict[str, Path]:
    """``relative path -> file`` for every file under ``directory``, sorted by path."""
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}


def hash_files(directory: Path) -> dict[str, dict[str, Any]]:
    """``relative path -> {sha256, bytes}`` for every file under ``directory`` but the manifest."""
    return {
        rel: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for rel, path in _files(directory).items()
        if rel != MANIFEST
    }


def _differences(directory: Path, recorded: dict[str, dict[str, Any]], rehash_all: bool) -> list[str]:
    """How the files under ``directory`` differ from the manifest's ``recorded`` ones, one line per file.

    Sizes are always compared; hashes of files up to ``REHASH_ON_REUSE_MAX_BYTES``, or of all with ``rehash_all``.
    """
    present = _files(directory)
    present.pop(MANIFEST, None)
    differences = {}
    for rel in recorded.keys() - present.keys():
        differences[rel] = f"{rel}: missing"
    for rel in present.keys() - recorded.keys():
        differences[rel] = f"{rel}: not in the manifest"
    for rel in recorded.keys() & present.keys():
        size, expected = present[rel].stat().st_size, recorded[rel]
        if size != expected["bytes"]:
            differences[rel] = f"{rel}: {size} bytes, the manifest says {expected['bytes']}"
        elif (rehash_all or size <= REHASH_ON_REUSE_MAX_BYTES) and file_sha256(present[rel]) != expected["sha256"]:
            differences[rel] = f"{rel}: sha256 differs from the manifest's"
    return [differences[rel] for rel in sorted(differences)]


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise ArtifactMismatch(directory, [f"{MANIFEST}: not valid JSON ({err})"]) from None


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ArtifactStore:
    """Artifacts of every stage under one directory."""

    def __init__(self, root: Path, git_commit: str = "unknown") -> None:
        self.root = root
        # Recorded in manifests for people to read; what versions an artifact is its Code's fingerprint.
        self.git_commit = git_commit

    def path(self, stage: str, version: str) -> Path:
        return self.root / stage / version

    def lookup(self, stage: str, version: str, verify: bool = False) -> Artifact | None:
        """The complete artifact of that version, or None.

        Raises ``ArtifactMismatch`` when its files differ from the manifest: a file missing,
        added or of another size, or a small file (``REHASH_ON_REUSE_MAX_BYTES``) with another
        hash. ``verify`` re-hashes every file.
        """
        path = self.path(stage, version)
        if not (path / MANIFEST).exists():
            return None
        manifest = _read_manifest(path)
        differences = _differences(path, manifest["files"], rehash_all=verify)
        if differences:
            raise ArtifactMismatch(path, differences)
        return Artifact(stage, version, path, manifest)

    def _artifact_dirs(self, stage: str) -> list[Path]:
        """The complete artifacts of a stage, oldest first; a build's temporary directory is none of them."""
        stage_dir = self.root / stage
        if not stage_dir.is_dir():
            return []
        manifests = [m for m in stage_dir.glob(f"*/{MANIFEST}") if not m.parent.name.startswith(".")]
        return [m.parent for m in sorted(manifests, key=lambda m: m.stat().st_mtime)]

    def get(self, ref: ArtifactRef) -> Artifact:
        """The artifact ``ref`` names; a ValueError saying how to build it when this store lacks it."""
        found = self.lookup(ref.stage, ref.version)
        if found is None:
            raise ValueError(
                f"no artifact {ref} in {self.root}: run the {ref.stage!r} stage here on the same inputs, "
                "or set LADDER_ROOT to the workspace that built it"
            )
        return found

    def latest(self, stage: str) -> Artifact | None:
        """The most recently completed artifact of a stage (for stages run on their own)."""
        found = self._artifact_dirs(stage)
        return self.lookup(stage, found[-1].name) if found else None

    def verify(self, stage: str | None = None) -> dict[Path, list[str]]:
        """Re-hash every file of every artifact (of ``stage`` only, if given).

        Returns each artifact's directory and how its files differ from its manifest, one line
        per file (empty when they match).
        """
        stages = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        if stage is not None:
            if stage not in stages:
                raise ValueError(
                    f"no artifacts of stage {stage!r} under {self.root}: stages with artifacts are {stages or 'none'}"
                )
            stages = [stage]
        results = {}
        for name in stages:
            for path in self._artifact_dirs(name):
                try:
                    results[path] = _differences(path, _read_manifest(path)["files"], rehash_all=True)
                except ArtifactMismatch as err:
                    results[path] = err.differences
        return results

    @contextmanager
    def _lock(self, stage: str, version: str) -> Iterator[None]:
        lock_path = self.root / stage / f".{version}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def run_stage(
        self,
        stage: str,
        config: Section,
        inputs: dict[str, str],
        build: Callable[[Path], StageOutput],
        *,
        code: Code,
    ) -> tuple[Artifact, bool]:
        """Return ``(artifact, cached)``; ``build(tmp_dir)`` writes the files when not cached.

        ``code`` is what builds the stage (its version changes with it). A found artifact
        that differs from its manifest raises ``ArtifactMismatch`` rather than being reused.
        """
        version = stage_version(stage, config, inputs, code)
        found = self.lookup(stage, version)
        if found is not None:
            return found, True
        with self._lock(stage, version):
            found = self.lookup(stage, version)  # another run may have finished it while we waited
            if found is not None:
                return found, True
            final = self.path(stage, version)
            tmp = final.parent / f".tmp-{version}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                output = build(tmp)
                manifest = {
                    "stage": stage,
                    "version": version,
                    "inputs": inputs,
                    "config_hash": config.hash(),
                    "config": config.to_dict(),
                    "code": {
                        "fingerprint": code_fingerprint(code),
                        "packages": list(code.packages),
                        "libraries": library_versions(code.libraries),
                    },
                    "git_commit": self.git_commit,
                    "files": hash_files(tmp),
                    "counts": output.counts,
                    "metrics": output.metrics,
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
                _fsync_tree(tmp)
                shutil.rmtree(final, ignore_errors=True)  # a manifest-less leftover is never trusted
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return Artifact(stage, version, final, manifest), False
