"""Read the packed token shards that the tokenizer stage writes, memory-mapped.

The format (files, dtypes, ``index.json`` keys) is stated once, beside its writer, in
``tasks.tokenizer.shards``; this module reads it, for training and the scaling ladder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.tokenizer.shards import DOC_INDEX, DOC_INDEX_DTYPE, DOCS, INDEX, TOKEN_DTYPE, TOKENS


class PackedShards:
    """Read-only, memory-mapped view of one shard directory."""

    def __init__(self, directory: Path) -> None:
        index_path = directory / INDEX
        if not index_path.exists():
            raise FileNotFoundError(f"no packed shards at {directory}: run `ladder tokenizer` first")
        self.directory = directory
        self.index: dict[str, Any] = json.loads(index_path.read_text())
        shape = (self.index["num_sequences"], self.index["seq_len"])
        self.tokens = np.memmap(directory / TOKENS, dtype=TOKEN_DTYPE, mode="r", shape=shape)
        self.doc_index = np.memmap(directory / DOC_INDEX, dtype=DOC_INDEX_DTYPE, mode="r", shape=shape)
        self._docs: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return self.index["num_sequences"]

    @property
    def seq_len(self) -> int:
        return self.index["seq_len"]

    @property
    def docs(self) -> list[dict[str, Any]]:
        """Per-document records, loaded on first use (only evidence reports need them)."""
        if self._docs is None:
            with (self.directory / DOCS).open(encoding="utf-8") as fh:
                self._docs = [json.loads(line) for line in fh]
        return self._docs
