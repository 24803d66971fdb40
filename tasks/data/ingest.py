"""Read the corpus's files into raw records; every file or record that cannot be read is quarantined.

A text file (.txt, .md) is one record, id ``<rel path>``; a .jsonl or .jsonl.gz line is one record,
id ``<rel path>:<line number, from 1>``; a .parquet row is one record, id ``<rel path>:<row, from 0>``.
Bad input never raises: each problem becomes a ``Quarantined`` entry with one of these reasons:

- file level: ``symlink_outside_input``, ``symlink_to_directory``, ``unsupported_extension``,
  ``unreadable`` (permission denied, vanished, corrupt gzip or parquet), ``file_too_large``,
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
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


from tasks.data.config import InputConfig
from tasks.data.corpus import InputFile, file_format
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


def _read_bytes(f: InputFile, cfg: InputConfig) -> bytes:
    try:
        size = f.path.stat().st_size
        if size > cfg.max_file_bytes:
            raise _Bad("file_too_large", f"{size} bytes exceeds data.input.max_file_bytes={cfg.max_file_bytes}")
        data = f.path.read_bytes()
        if file_format(f.rel) == "jsonl.gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise _Bad("unreadable", f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}") from None
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

    try:
        schema = pq.read_schema(f.path)
        if cfg.text_field not in schema.names:
            raise _Bad(
                "missing_text_field", f"no column {cfg.text_field!r} (has {schema.names}): set data.input.text_field"
            )
        values = pq.read_table(f.path, columns=[cfg.text_field]).column(0).to_pylist()
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
