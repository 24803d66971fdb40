"""Packed token shards: fixed-length sequences that keep track of which document each token is from.

Documents are concatenated in order, each followed by the boundary token, and cut into rows
of ``seq_len`` tokens; a document may continue into the next row. Only the last row is
padded. A shard directory (one per split) holds:

- ``tokens.bin``: uint32, shape (num_sequences, seq_len), token ids;
- ``doc_index.bin``: int32, same shape, row of ``docs.jsonl`` each token belongs to (its
  boundary token included), -1 for padding;
- ``docs.jsonl``: one line per packed document (id, source, num_tokens and any statistics the
  packer was given), the evidence a data team reads when a batch misbehaves;
- ``index.json``: seq_len, num_sequences, pad_id, boundary_id, vocab_size, num_tokens,
  num_padding.

Position ids and the block-diagonal attention mask are derived from ``doc_index``, so the
shards store no redundant state.

This module writes the shards and is the one statement of their format; training reads them
with ``tasks.train.shards.PackedShards``, which takes the file names and dtypes from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKENS = "tokens.bin"
DOC_INDEX = "doc_index.bin"
DOCS = "docs.jsonl"
INDEX = "index.json"
TOKEN_DTYPE = np.uint32
DOC_INDEX_DTYPE = np.int32


@dataclass(frozen=True)
class PackStats:
    num_sequences: int
    num_tokens: int
    num_padding: int
    num_documents: int

    @property
    def efficiency(self) -> float:
        """Non-padding tokens over all tokens."""
        total = self.num_tokens + self.num_padding
        return self.num_tokens / total if total else 1.0


def write_packed(
    out_dir: Path,
    documents: Iterable[tuple[dict[str, Any], Sequence[int]]],
    seq_len: int,
    pad_id: int,
    boundary_id: int,
    vocab_size: int,
) -> PackStats:
    """Pack ``(doc record, token ids)`` pairs into ``out_dir``; memory holds one row at a time."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    out_dir.mkdir(parents=True, exist_ok=True)
    row_tokens = np.full(seq_len, pad_id, dtype=TOKEN_DTYPE)
    row_docs = np.full(seq_len, -1, dtype=DOC_INDEX_DTYPE)
    fill = num_rows = num_tokens = num_docs = 0
    with (out_dir / TOKENS).open("wb") as tok_fh, (out_dir / DOC_INDEX).open("wb") as doc_fh, (
        out_dir / DOCS
    ).open("w", encoding="utf-8") as docs_fh:
        for record, ids in documents:
            stream = np.append(np.asarray(ids, dtype=TOKEN_DTYPE), TOKEN_DTYPE(boundary_id))
            docs_fh.write(json.dumps({**record, "num_tokens": len(stream)}, sort_keys=True) + "\n")
            pos = 0
            while pos < len(stream):
                take = min(seq_len - fill, len(stream) - pos)
                row_tokens[fill : fill + take] = stream[pos : pos + take]
                row_docs[fill : fill + take] = num_docs
                fill += take
                pos += take
                if fill == seq_len:
                    tok_fh.write(row_tokens.tobytes())
                    doc_fh.write(row_docs.tobytes())
                    num_rows += 1
                    fill = 0
            num_tokens += len(stream)
            num_docs += 1
        if fill:
            row_tokens[fill:] = pad_id
            row_docs[fill:] = -1
            tok_fh.write(row_tokens.tobytes())
            doc_fh.write(row_docs.tobytes())
            num_rows += 1
    stats = PackStats(num_rows, num_tokens, num_rows * seq_len - num_tokens, num_docs)
    index = {
        "seq_len": seq_len,
        "num_sequences": num_rows,
        "pad_id": pad_id,
        "boundary_id": boundary_id,
        "vocab_size": vocab_size,
        "num_tokens": num_tokens,
        "num_padding": stats.num_padding,
        "num_documents": num_docs,
    }
    (out_dir / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return stats
