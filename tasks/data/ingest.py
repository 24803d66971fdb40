"""Read the corpus's files into raw records; every file or record that cannot be read is quarantined.

A text file (.txt, .md) is one record, id ``<rel path>``; a .jsonl or .jsonl.gz line is one record,
id ``<rel path>:<line number, from 1>``; a .parquet row is one record, id ``<rel path>:<row, from 0>``.
Bad input never raises: each problem becomes a ``Quarantined`` entry with one of these reasons:

- file level: ``symlink_outside_input``, ``symlink_to_directory``, ``not_regular_file`` (a FIFO,
  socket or device: never opened), ``unsupported_extension``, ``unreadable`` (permission denied,
  vanished, a dangling or looping symlink, a directory that cannot be listed, corrupt gzip or
  parquet), ``file_too_large`` (past ``data.input.max_file_bytes`` on disk or once decompressed),
  ``binary`` (NUL bytes), ``invalid_utf8``, ``empty``, ``line_too_long``;
- record level (jsonl, parquet): ``malformed_json``, ``missing_text_field``, ``invalid_utf8``,
  ``empty``, ``line_too_long``.

So that the accounting identity holds (documents in = kept + quarantined by reason), a quarantined
file or record counts as one document. Messages never carry absolute paths: the curated dataset
must be byte-identical wherever it is built.

A large .jsonl or .parquet file can also be read in parts (``file_parts``, ``ingest_part``): runs of
whole lines, or of row groups, that together give exactly the records, ids and quarantine entries of
reading it whole, so that one big file is processed in parallel with memory bounded by the part.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from tasks.data.config import InputConfig
from tasks.data.corpus import InputFile, NotRegularFile, file_format, open_input
from tasks.data.document import Document

NUL = b"\0"


@dataclass
class Quarantined:
    """A document (or an unreadable file or record) left out of the dataset, and why."""

    id: str
    source: str
    reason: str
    duplicate_of: str | None = None
    detail: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)


@dataclass
class IngestResult:
    """Raw records in corpus order, what was quarantined, and per-file counts."""

    records: list[Document]
    quarantined: list[Quarantined]
    files: dict[str, Any]


class _Bad(Exception):
    """A file or record that must be quarantined with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # a BOM is an encoding artefact, not text
    except UnicodeDecodeError as err:
        raise _Bad("invalid_utf8", f"invalid UTF-8 at byte {err.start}: convert the file to UTF-8") from None


def _check_text(text: str, cfg: InputConfig) -> None:
    if not text.strip():
        raise _Bad("empty", "no text")
    longest = max(map(len, text.splitlines()))
    if longest > cfg.max_line_chars:
        raise _Bad(
            "line_too_long",
            f"a line of {longest} chars exceeds data.input.max_line_chars={cfg.max_line_chars}",
        )


def _too_large(what: str, cfg: InputConfig) -> _Bad:
    return _Bad("file_too_large", f"{what}, past data.input.max_file_bytes={cfg.max_file_bytes}: split the file")


def _error_detail(err: Exception) -> str:
    return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"


@contextmanager
def _opened(f: InputFile, cfg: InputConfig) -> Iterator[BinaryIO]:
    """``f`` open for reading (see ``open_input``), its size on disk within ``cfg.max_file_bytes``."""
    try:
        fh = open_input(f)
    except NotRegularFile as err:  # swapped in after discovery classified the entry
        raise _Bad("not_regular_file", str(err)) from None
    except OSError as err:
        raise _Bad("unreadable", _error_detail(err)) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > cfg.max_file_bytes:
            raise _too_large(f"{size} bytes on disk", cfg)
        yield fh


def _read_bytes(f: InputFile, cfg: InputConfig) -> bytes:
    """The file's bytes, decompressed for .jsonl.gz; at most ``cfg.max_file_bytes`` of them either way.

    Reading one byte past the bound tells a file at the bound from a larger one: a gzip bomb is
    stopped after ``max_file_bytes`` of output, and a file that grew since ``fstat`` is caught too.
    """
    compressed = file_format(f.rel) == "jsonl.gz"
    with _opened(f, cfg) as fh:
        try:
            data = (gzip.GzipFile(fileobj=fh) if compressed else fh).read(cfg.max_file_bytes + 1)
        except (OSError, EOFError, zlib.error) as err:
            raise _Bad("unreadable", _error_detail(err)) from None
    if len(data) > cfg.max_file_bytes:
        grown = "once decompressed" if compressed else "as read (it grew after its size was checked)"
        raise _too_large(f"more than {cfg.max_file_bytes} bytes {grown}", cfg)
    if not data.strip():
        raise _Bad("empty", "no bytes" if not data else "only whitespace")
    if NUL in data:
        raise _Bad("binary", f"NUL byte at offset {data.index(NUL)}: not a text file")
    return data


def _text_record(f: InputFile, cfg: InputConfig) -> Document:
    text = _decode(_read_bytes(f, cfg))
    _check_text(text, cfg)
    return Document(f.rel, f.source, text, {"file": f.rel, **f.meta})


def _record_text(value: Any, text_field: str, cfg: InputConfig) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise _Bad("missing_text_field", f"text field {text_field!r} is {kind}: set data.input.text_field")
    _check_text(value, cfg)
    return value


def _jsonl_records(f: InputFile, cfg: InputConfig, bad: list[Quarantined]) -> list[Document]:
    return _line_records(f, _read_bytes(f, cfg), 1, cfg, bad)


def _line_records(f: InputFile, data: bytes, first_line: int, cfg: InputConfig,
                  bad: list[Quarantined]) -> list[Document]:
    """The records of ``data``, whole JSON lines of ``f`` from line number ``first_line``."""
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=first_line):
        if not raw.strip():
            continue  # blank separator lines hold no record
        rid = f"{f.rel}:{number}"
        try:
            try:
                obj = json.loads(_decode(raw))
            except json.JSONDecodeError as err:
                raise _Bad("malformed_json", f"{err.msg} at column {err.colno}") from None
            value = obj.get(cfg.text_field) if isinstance(obj, dict) else None
            text = _record_text(value, cfg.text_field, cfg)
        except _Bad as err:
            bad.append(Quarantined(rid, f.source, err.reason, detail=err.detail))
            continue
        records.append(Document(rid, f.source, text, {"file": f.rel, "line": number, **f.meta}))
    return records


def _parquet_columns(fh: BinaryIO, cfg: InputConfig) -> Iterator[Any]:
    """The text column of each row group of the parquet file open on ``fh``, in order; a verdict on the whole
    file (unreadable, missing_text_field, file_too_large) raises ``_Bad``."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(fh)
        if cfg.text_field not in table.schema_arrow.names:
            raise _Bad("missing_text_field",
                       f"no column {cfg.text_field!r} (has {table.schema_arrow.names}): set data.input.text_field")
        # Row group by row group, so that a column decompressing past the bound stops the read
        # within one row group of it.
        decoded = 0
        for index in range(table.num_row_groups):
            column = table.read_row_group(index, columns=[cfg.text_field]).column(0)
            decoded += column.nbytes
            if decoded > cfg.max_file_bytes:
                limit = cfg.max_file_bytes
                raise _too_large(f"column {cfg.text_field!r} holds more than {limit} bytes decompressed", cfg)
            yield column
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        raise _Bad("unreadable", f"not a readable parquet file: {type(err).__name__}") from None


def _parquet_records(f: InputFile, cfg: InputConfig, bad: list[Quarantined]) -> list[Document]:
    with _opened(f, cfg) as fh:
        values = [value for column in _parquet_columns(fh, cfg) for value in column.to_pylist()]
    return _row_records(f, values, 0, cfg, bad)


def _row_records(f: InputFile, values: list[Any], first_row: int, cfg: InputConfig,
                 bad: list[Quarantined]) -> list[Document]:
    """The records of ``values``, the text column of consecutive rows of ``f`` from row ``first_row``."""
    records = []
    for row, value in enumerate(values, start=first_row):
        rid = f"{f.rel}:{row}"
        try:
            text = _record_text(value, cfg.text_field, cfg)
        except _Bad as err:
            bad.append(Quarantined(rid, f.source, err.reason, detail=err.detail))
            continue
        records.append(Document(rid, f.source, text, {"file": f.rel, "row": row, **f.meta}))
    return records


def _read(f: InputFile, cfg: InputConfig, bad: list[Quarantined]) -> list[Document]:
    """The records of one file; bad records go to ``bad``, a bad file raises ``_Bad``."""
    if f.rejected:
        raise _Bad(f.rejected, f.detail)
    fmt = file_format(f.rel)
    if fmt == "text":
        return [_text_record(f, cfg)]
    if fmt == "parquet":
        return _parquet_records(f, cfg, bad)
    return _jsonl_records(f, cfg, bad)


@dataclass(frozen=True)
class LineRange:
    """Bytes ``[start, end)`` of a .jsonl file, which begin and end at line starts; ``first_line`` is the
    number (from 1) of the line at ``start``."""

    start: int
    end: int
    first_line: int


@dataclass(frozen=True)
class RowGroups:
    """Row groups ``[start, end)`` of a .parquet file; ``first_row`` is the number (from 0) of the first row
    of group ``start``."""

    start: int
    end: int
    first_row: int


FilePart = LineRange | RowGroups

_SCAN_BLOCK = 1 << 20  # bytes read at a time when a .jsonl file is scanned for its line ranges


def file_parts(f: InputFile, max_bytes: int, cfg: InputConfig) -> list[FilePart] | None:
    """``f`` cut into parts of even size, each at most about ``max_bytes`` on disk, in file order: ranges of
    whole lines of a .jsonl file, runs of row groups of a .parquet file. None when it must be read whole:
    another format (a gzip stream cannot be entered in the middle, so a .jsonl.gz is read whole), no larger
    than ``max_bytes``, a parquet file of one row group, or a verdict on the whole file that only reading it
    whole gives (unreadable, file_too_large, empty, binary, missing_text_field).

    Finding that verdict reads the whole file once, a block or a row group at a time: a NUL byte anywhere
    makes a .jsonl file ``binary``, records and all, and a parquet file's text column is bounded, once
    decompressed, over all its row groups. The line numbers at the cuts make the records' ids.
    """
    fmt = file_format(f.rel)
    if f.rejected or fmt not in ("jsonl", "parquet"):
        return None
    try:
        with _opened(f, cfg) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= max_bytes:
                return None
            # even parts: a file just past max_bytes makes two halves, not a full part and a sliver
            part_bytes = -(-size // -(-size // max_bytes))
            parts = _line_ranges(fh, part_bytes) if fmt == "jsonl" else _row_group_runs(fh, part_bytes, cfg)
    except _Bad:
        return None  # ingest gives the verdict, reading the file whole
    return parts if parts and len(parts) > 1 else None


def _line_ranges(fh: BinaryIO, part_bytes: int) -> list[FilePart] | None:
    """The file on ``fh`` cut at the first line start at or past every ``part_bytes`` from the last cut."""
    cuts: list[tuple[int, int]] = []  # (offset of a range's first byte, newlines before it)
    offset, newlines, blank, next_cut = 0, 0, True, part_bytes
    while block := fh.read(_SCAN_BLOCK):
        if NUL in block:
            return None
        blank = blank and not block.strip()
        while (newline := block.find(b"\n", max(next_cut - 1 - offset, 0))) >= 0:
            cuts.append((offset + newline + 1, newlines + block.count(b"\n", 0, newline + 1)))
            next_cut = offset + newline + 1 + part_bytes
        newlines += block.count(b"\n")
        offset += len(block)
    if blank:
        return None
    starts = [(0, 0), *(cut for cut in cuts if cut[0] < offset)]
    ends = [start for start, _ in starts[1:]] + [offset]
    return [LineRange(start, end, before + 1) for (start, before), end in zip(starts, ends)]


def _row_group_runs(fh: BinaryIO, part_bytes: int, cfg: InputConfig) -> list[FilePart]:
    """The row groups of the parquet file on ``fh`` in runs of at least ``part_bytes`` on disk (the last one
    excepted); raises ``_Bad`` as reading it whole would."""
    import pyarrow.parquet as pq

    rows = [len(column) for column in _parquet_columns(fh, cfg)]
    metadata = pq.ParquetFile(fh).metadata
    runs: list[FilePart] = []
    start, first_row, size = 0, 0, 0
    for index, count in enumerate(rows):
        group = metadata.row_group(index)
        size += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        if size >= part_bytes or index == len(rows) - 1:
            runs.append(RowGroups(start, index + 1, first_row))
            first_row += sum(rows[start : index + 1])
            start, size = index + 1, 0
    return runs


def ingest_part(f: InputFile, part: FilePart, cfg: InputConfig) -> IngestResult:
    """The records of ``part`` of ``f`` (one of its ``file_parts``), as ``ingest`` reads them from the whole
    file; the file itself is counted by its first part only."""
    # Its parts were planned from a read of the whole file: a part that cannot be read as planned means the
    # file changed since, and no verdict on a part of it would count it once.
    changed = f"{f.rel} changed while the data stage read it: run the stage again once the corpus is at rest"
    bad: list[Quarantined] = []
    try:
        with _opened(f, cfg) as fh:
            if isinstance(part, LineRange):
                fh.seek(part.start)
                data = fh.read(part.end - part.start)
                if len(data) != part.end - part.start:
                    raise ValueError(changed)
                records = _line_records(f, data, part.first_line, cfg, bad)
            else:
                import pyarrow.parquet as pq

                table = pq.ParquetFile(fh)
                values = [value for index in range(part.start, part.end)
                          for value in table.read_row_group(index, columns=[cfg.text_field]).column(0).to_pylist()]
                records = _row_records(f, values, part.first_row, cfg, bad)
    except (_Bad, OSError) as err:
        raise ValueError(f"{changed} ({err})") from None
    first = part.start == 0
    return IngestResult(records, bad, {"total": int(first), "read": int(first), "quarantined": {}})


def ingest(files: list[InputFile], cfg: InputConfig) -> IngestResult:
    """Read every file in order; never raises on bad input (see the module docstring for reasons)."""
    records: list[Document] = []
    quarantined: list[Quarantined] = []
    file_reasons: Counter[str] = Counter()
    for f in files:
        try:
            records.extend(_read(f, cfg, quarantined))
        except _Bad as err:
            file_reasons[err.reason] += 1
            quarantined.append(Quarantined(f.rel, f.source, err.reason, detail=err.detail))
    counts = {
        "total": len(files),
        "read": len(files) - sum(file_reasons.values()),
        "quarantined": dict(sorted(file_reasons.items())),
    }
    return IngestResult(records, quarantined, counts)
