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
    records = []
    for number, raw in enumerate(_read_bytes(f, cfg).split(b"\n"), start=1):
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


def _parquet_records(f: InputFile, cfg: InputConfig, bad: list[Quarantined]) -> list[Document]:
    import pyarrow.parquet as pq

    values: list[Any] = []
    with _opened(f, cfg) as fh:
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
                values.extend(column.to_pylist())
        except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
            raise _Bad("unreadable", f"not a readable parquet file: {type(err).__name__}") from None
    records = []
    for row, value in enumerate(values):
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
