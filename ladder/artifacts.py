"""The stage contract: one artifact directory per (stage, inputs, config), with a manifest.

A stage's version is the hash of its name, its resolved config and the versions of its
inputs. ``run_stage`` returns the existing artifact when that version is already complete (a
cache hit that does no work); otherwise it builds the artifact in a temporary directory under
an exclusive lock and renames it into place only when the manifest is written. A crash leaves
only a temporary directory that no reader trusts; a concurrent run waits on the lock and then
finds the finished artifact.

Layout: ``<store>/<stage>/<version>/`` holding the stage's files and ``manifest.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
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


@dataclass
class StageOutput:
    """What a stage's builder reports besides its files."""

    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """A complete, verified stage output."""

    stage: str
    version: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]


def stage_version(stage: str, config: Section, inputs: dict[str, str]) -> str:
    """The version of a stage's output: a hash of what determines it, nothing else."""
    return content_hash({"stage": stage, "config": config.to_dict(), "inputs": inputs})


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, keys sorted, text as is (not \\u-escaped); the parent directory is made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(directory: Path) -> dict[str, dict[str, Any]]:
    """``relative path -> {sha256, bytes}`` for every file under ``directory`` but the manifest."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != MANIFEST:
            files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return files


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

    def __init__(self, root: Path, code_version: str = "unknown") -> None:
        self.root = root
        self.code_version = code_version

    def path(self, stage: str, version: str) -> Path:
        return self.root / stage / version

    def lookup(self, stage: str, version: str, verify: bool = False) -> Artifact | None:
        """The complete artifact of that version, or None. ``verify`` re-hashes every file."""
        path = self.path(stage, version)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            return None
        manifest = json.loads(manifest_path.read_text())
        if verify and hash_files(path) != manifest["files"]:
            raise ValueError(
                f"artifact {path} does not match its manifest (edited or corrupted): "
                f"delete the directory to rebuild it"
            )
        return Artifact(stage, version, path, manifest)

    def latest(self, stage: str) -> Artifact | None:
        """The most recently completed artifact of a stage (for stages run on their own)."""
        stage_dir = self.root / stage
        if not stage_dir.exists():
            return None
        manifests = sorted(stage_dir.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
        if not manifests:
            return None
        return self.lookup(stage, manifests[-1].parent.name)

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
    ) -> tuple[Artifact, bool]:
        """Return ``(artifact, cached)``; ``build(tmp_dir)`` writes the files when not cached."""
        version = stage_version(stage, config, inputs)
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
                    "code_version": self.code_version,
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
