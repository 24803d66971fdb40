"""Session fixtures: the small curated dataset, and the tokenizer stage built on it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.tokenizer.stage import build_tokenizer
from tokenizer_corpus import TINY, write_curated


@pytest.fixture(scope="session")
def curated(tmp_path_factory) -> Path:
    """About 300 KB of train text, 40 validation and 20 test documents."""
    data_dir = tmp_path_factory.mktemp("data")
    write_curated(data_dir, {"train": 240, "validation": 40, "test": 20})
    return data_dir


@pytest.fixture(scope="session")
def built(curated, tmp_path_factory) -> Path:
    """The tokenizer stage's output directory for ``TINY`` (every kind, two sizes)."""
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(curated, TINY, out)
    return out
