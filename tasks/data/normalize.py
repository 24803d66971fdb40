"""Normalize raw records and cut them into documents.

Normalization: Unicode NFC, line endings to ``\\n``, trailing whitespace removed from every line, then
(optionally) Project Gutenberg headers, footers and licence paragraphs removed.

Document split policy ``paragraph_cdc`` (content-defined chunking on paragraph boundaries): the text is
split at blank lines into paragraphs, and consecutive paragraphs are grouped into a document. A
document closes after a paragraph whose content hash (xxh64 of its whitespace-collapsed text) is 0
modulo ``boundary_modulus``, once it holds at least ``min_chars``; it also closes before it would
exceed ``max_chars`` (a paragraph longer than that is first cut at line breaks); a tail shorter than
``min_chars`` joins the previous document when it fits. Boundaries depend only
on the text, so a work embedded in a collection falls into the same documents as the work shipped
alone, from its first shared boundary on, and exact or near dedup then catches them.

Document ids are ``<record id>#<chunk index>``; meta keeps the record's meta plus ``chunk``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import xxhash

from tasks.data.config import NormalizeConfig
from tasks.data.document import Document
from tasks.data.ingest import Quarantined

# Markers of the Project Gutenberg header's end and footer's start, old and new styles.
_GUTENBERG_START = re.compile(
    r"^\W*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG|\*?END\*?THE SMALL PRINT|"
    r"\*{3}\s*START\*{2}THE SMALL PRINT)",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\W*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|END OF (THE |THIS )?PROJECT GUTENBERG)",
    re.IGNORECASE | re.MULTILINE,
)
# Licence and producer paragraphs that survive outside the header and footer.
_BOILERPLATE = re.compile(
    r"project gutenberg|gutenberg\.(org|net)|\be-?texts?\b|^\s*(produced|prepared|transcribed) by\b", re.IGNORECASE
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


@dataclass
class NormalizeResult:
    """Documents in corpus order, records left empty by normalization, and what was stripped."""

    documents: list[Document]
    quarantined: list[Quarantined]
    metrics: dict[str, int] = field(default_factory=dict)


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line endings and no trailing whitespace on any line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def strip_gutenberg(text: str, stats: Counter[str]) -> str:
    """Drop the Project Gutenberg header (up to its last start marker), footer and licence paragraphs.

    Only markers in the first half (header) or second half (footer) count, so a play that quotes
    a marker-like line mid-text is not truncated. ``stats`` counts what was removed.
    """
    half = len(text) // 2
    starts = [m for m in _GUTENBERG_START.finditer(text) if m.start() < half]
    if starts:
        line_end = text.find("\n", starts[-1].end())
        text = text[line_end + 1 :] if line_end >= 0 else ""
        stats["gutenberg_headers"] += 1
    half = len(text) // 2
    end = next((m for m in _GUTENBERG_END.finditer(text) if m.start() >= half), None)
    if end is not None:
        text = text[: end.start()]
        stats["gutenberg_footers"] += 1
    kept = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        if _BOILERPLATE.search(paragraph):
            stats["boilerplate_paragraphs"] += 1
        else:
            kept.append(paragraph)
    return "\n\n".join(kept).strip("\n")


def paragraph_key(paragraph: str) -> int:
    """Content hash of a paragraph, blind to indentation and line wrapping."""
    return xxhash.xxh64_intdigest(" ".join(paragraph.split()).encode())


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """Paragraphs of ``text``, those longer than ``max_chars`` cut at line breaks (or hard, for a long line)."""
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if len(paragraph) <= max_chars:
            yield paragraph
            continue
        piece = ""
        for line in paragraph.split("\n"):
            while len(line) > max_chars:
                if piece:
                    yield piece
                    piece = ""
                yield line[:max_chars]
                line = line[max_chars:]
            if piece and len(piece) + 1 + len(line) > max_chars:
                yield piece
                piece = ""
            piece = f"{piece}\n{line}" if piece else line
        if piece.strip():
            yield piece


def chunk_paragraphs(text: str, cfg: NormalizeConfig) -> list[str]:
    """Content-defined chunks of whole paragraphs (see the module docstring)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in _pieces(text, cfg.max_chars):
        if current and size + 2 + len(paragraph) > cfg.max_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        size += len(paragraph) + (2 if current else 0)
        current.append(paragraph)
        if size >= cfg.min_chars and paragraph_key(paragraph) % cfg.boundary_modulus == 0:
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        tail = "\n\n".join(current)
        # A short tail (a closing stage direction, "THE END") joins the previous document rather
        # than becoming a fragment that the quality rules would drop.
        if chunks and size < cfg.min_chars and len(chunks[-1]) + 2 + size <= cfg.max_chars:
            chunks[-1] = f"{chunks[-1]}\n\n{tail}"
        else:
            chunks.append(tail)
    return chunks


def normalize(records: list[Document], cfg: NormalizeConfig) -> NormalizeResult:
    """Normalize every record and cut it into documents by ``cfg.policy``."""
    documents: list[Document] = []
    quarantined: list[Quarantined] = []
    stats: Counter[str] = Counter()
    for record in records:
        text = normalize_text(record.text)
        if cfg.strip_gutenberg:
            text = strip_gutenberg(text, stats)
        if not text.strip():
            quarantined.append(
                Quarantined(record.id, record.source, "empty_after_normalization",
                            detail="nothing left after removing boilerplate")
            )
            continue
        chunks = chunk_paragraphs(text, cfg) if cfg.policy == "paragraph_cdc" else [text]
        for index, chunk in enumerate(chunks):
            documents.append(Document(f"{record.id}#{index}", record.source, chunk, {**record.meta, "chunk": index}))
    metrics = {key: stats[key] for key in ("gutenberg_headers", "gutenberg_footers", "boilerplate_paragraphs")}
    return NormalizeResult(documents, quarantined, metrics)
