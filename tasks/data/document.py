"""The one record type that flows through the data stage, and the curated dataset's layout.

The curated dataset (``data/`` in the workspace, tracked by DVC) holds
``curated/<split>/part-NNNNN.jsonl`` for split in train, validation and test (one
``Document`` per line), ``quarantine.jsonl`` (every dropped document with its reason) and
``dataset.json`` (config, counts by reason, per-source statistics).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")


@dataclass
class Document:
    """A unit of text with a stable id, the source it came from, and what we learned about it."""

    id: str  # stable across runs: "<relative file path>#<chunk index>"
    source: str  # mixture group, e.g. "shakespeare" or "milton"
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "Document":
        return cls(**json.loads(line))


def split_dir(data_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    return data_dir / "curated" / split


def iter_split(data_dir: Path, split: str) -> Iterator[Document]:
    """Stream the documents of one curated split in their stored (deterministic) order."""
    directory = split_dir(data_dir, split)
    if not directory.exists():
        raise FileNotFoundError(f"no curated split at {directory}: run `ladder data` first")
    for part in sorted(directory.glob("part-*.jsonl")):
        with part.open(encoding="utf-8") as fh:
            for line in fh:
                yield Document.from_json(line)
