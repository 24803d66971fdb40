"""The curated dataset of one DVC md5, readable on this machine: what every consumer of the data reads.

The md5 in ``data.dvc`` (or a trigger's ``dataset_md5``) names a dataset; ``resolve_dataset``
locates it. In order:

1. the data stage's own artifact of that version, when this workspace curated it (the data
   stage records which artifact produced which md5);
2. the workspace's ``data/`` checkout, when ``data.dvc`` records that md5 and the bytes in
   ``data/`` hash to it (a dataset versioned by hand with ``dvc add data``);
3. the content-addressed cache ``.ladder/datasets/<md5>/``, filled earlier by step 4;
4. the workspace's DVC remote: the version is pulled into that cache, its DVC directory md5
   recomputed from the bytes and compared with the one asked for, and only then trusted.

A version found nowhere is an error that names the md5 and the remote. A run is thereby tied
to exactly the version it was given, whoever curated it and on whichever machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ladder.workspace import Workspace
from tasks.data.curate import STAGE
from tasks.data.document import Document, iter_split
from tasks.data.version import STAMPS, dataset_version, dvc_md5, dvc_remote, run_dvc

DATASET_JSON = "dataset.json"
# A remote's dataset is pulled into a DVC project of its own (no git): DVC refuses .dvc files
# that git ignores, and the cache lives under the ignored .ladder/.
CACHE_DIR = "datasets"
VERIFIED = ".verified.json"


@dataclass(frozen=True)
class Dataset:
    """A curated dataset version: its DVC md5 and a directory holding ``curated/<split>/`` and ``dataset.json``."""

    md5: str
    path: Path
    source: str  # where it was found: the data artifact, the local cache or the DVC remote

    def documents(self, split: str) -> Iterator[Document]:
        """The documents of one split in their stored order."""
        return iter_split(self.path, split)

    @cached_property
    def info(self) -> dict[str, Any]:
        """``dataset.json``: the raw corpus hash, the data config, counts by reason and split."""
        path = self.path / DATASET_JSON
        if not path.exists():
            raise ValueError(
                f"dataset {self.md5} at {self.path} has no {DATASET_JSON}: it was not curated by `ladder data` "
                "(which records the raw corpus and counts there); curate it with `ladder data`"
            )
        return json.loads(path.read_text(encoding="utf-8"))

    @property
    def corpus(self) -> str:
        """Content hash of the raw corpus this dataset was curated from."""
        return self.info["corpus"]


def dvc_dir_md5(directory: Path, names: tuple[str, ...] | None = None) -> str:
    """DVC's md5 of a directory (``outs[0].md5`` of ``dvc add``), recomputed from the bytes.

    DVC hashes the sorted listing of (file md5, relative path); ``names`` limits it to those
    top-level entries (a data artifact holds more than the dataset it versions).
    """
    files = sorted(
        p for p in directory.rglob("*")
        if p.is_file() and (names is None or p.relative_to(directory).parts[0] in names)
    )
    listing = []
    for path in files:
        digest = hashlib.md5()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        listing.append({"md5": digest.hexdigest(), "relpath": path.relative_to(directory).as_posix()})
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def _from_artifact(ws: Workspace, md5: str) -> Dataset | None:
    stamps_path = ws.artifacts / STAGE / STAMPS
    if not stamps_path.exists():
        return None
    for version, known in sorted(json.loads(stamps_path.read_text()).items()):
        if known == md5:
            artifact = ws.store().lookup(STAGE, version)
            if artifact is not None:
                return Dataset(md5, artifact.path, f"data artifact {version}")
    return None


def _from_checkout(ws: Workspace, md5: str) -> Dataset | None:
    if dvc_md5(ws) != md5 or not ws.data.is_dir() or dvc_dir_md5(ws.data) != md5:
        return None
    return Dataset(md5, ws.data, "data/ checkout")


def _sizes(directory: Path) -> dict[str, int]:
    return {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def _cache_project(ws: Workspace) -> Path:
    """The DVC project the remote's versions are pulled into, with the workspace's remote and cache."""
    from dvc.config import Config

    root = ws.state / CACHE_DIR
    if not (root / ".dvc").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        run_dvc(root, "init", "-q", "--no-scm", "--force")
    # The workspace's remote as it is now (a colleague may have changed it), credentials included.
    config = Config(dvc_dir=str(ws.root / ".dvc"))
    name = config["core"].get("remote")
    if not name:
        raise ValueError(f"{ws.root} has no default DVC remote: run `dvc remote add -d NAME URL` there")
    run_dvc(root, "remote", "add", "-f", "-d", "origin", dvc_remote(ws))
    for option, value in config["remote"][name].items():
        if option != "url":
            run_dvc(root, "remote", "modify", "--local", "origin", option, str(value))
    # One cache for both projects: a version curated here is not stored twice.
    run_dvc(root, "cache", "dir", "--local", str(ws.root / ".dvc" / "cache"))
    return root


def _from_cache(ws: Workspace, md5: str) -> Dataset | None:
    directory = ws.state / CACHE_DIR / md5.removesuffix(".dir")
    marker = directory.parent / f"{directory.name}{VERIFIED}"
    # Checked by size on every use: the bytes were checked against the md5 when it was pulled.
    if marker.exists() and directory.is_dir() and json.loads(marker.read_text()) == _sizes(directory):
        return Dataset(md5, directory, "local dataset cache")
    return None


def _pull(ws: Workspace, md5: str) -> Dataset:
    root = _cache_project(ws)
    digest = md5.removesuffix(".dir")
    directory = root / digest
    marker = root / f"{digest}{VERIFIED}"
    marker.unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    (root / f"{digest}.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": digest}]}))
    try:
        run_dvc(root, "pull", "-q", f"{digest}.dvc")
    except RuntimeError as err:
        shutil.rmtree(directory, ignore_errors=True)
        raise ValueError(
            f"dataset {md5} is neither in this workspace nor on its DVC remote {dvc_remote(ws)}: "
            f"push it from the workspace that curated it (`dvc push`), or point the remote at the one it was pushed to "
            f"(`dvc remote add -d -f NAME URL`)\n{err}"
        ) from None
    found = dvc_dir_md5(directory)
    if found != md5:
        shutil.rmtree(directory, ignore_errors=True)
        raise ValueError(f"dataset {md5} pulled from {dvc_remote(ws)} hashes to {found}: the remote's copy is corrupted")
    marker.write_text(json.dumps(_sizes(directory)))
    return Dataset(md5, directory, f"DVC remote {dvc_remote(ws)}")


def resolve_dataset(ws: Workspace, md5: str | None = None) -> Dataset:
    """The curated dataset of exactly version ``md5`` (see the module docstring for where it comes from).

    Without ``md5``, the version the workspace's ``data.dvc`` records.
    """
    md5 = md5 or dataset_version(ws)
    if not md5.endswith(".dir"):
        raise ValueError(f"{md5!r} is not a dataset version: use the DVC md5 of a directory (data.dvc outs[0].md5, ending in .dir)")
    found = _from_artifact(ws, md5) or _from_checkout(ws, md5) or _from_cache(ws, md5)
    if found is not None:
        return found
    lock = ws.state / CACHE_DIR / f".{md5}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # two runs asking for one version pull it once
        return _from_cache(ws, md5) or _pull(ws, md5)
