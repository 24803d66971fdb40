"""Session fixtures: a small curated corpus, its chat tokenizer, and an untrained tiny model saved with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.llama import build_model
from tests.tasks.align.align_corpus import MODEL, one_thread, train_tokenizer, write_curated


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def align_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four train, two validation and two test documents of each of the eight titles."""
    data_dir = tmp_path_factory.mktemp("align-data")
    write_curated(data_dir, {"train": 4, "validation": 2, "test": 2})
    return data_dir


@pytest.fixture(scope="session")
def tokenizer_dir(align_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(align_data, tmp_path_factory.mktemp("align-tokenizer"))


@pytest.fixture(scope="session")
def model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny Llama with the tokenizer beside it: enough to check shapes, masks and formulas."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("align-model")
    model = build_model(MODEL, seed=0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
