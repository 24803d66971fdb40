"""Small held-out splits and a suite config sized to build in a second."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from eval_corpus import lexicon, write_curated
from models.llama import ModelConfig

SIZES = {"train": 120, "validation": 24, "test": 24}
# The tiny profile's context (256 tokens) and the smaller of its tokenizers' vocabularies.
TINY_LM = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, intermediate_size=192, max_seq_len=256)
# Standard deviation of the noise added to every weight of the worse candidate.
WORSE_NOISE = 0.011


@pytest.fixture
def curated(tmp_path: Path) -> Path:
    """A fresh curated dataset (tests may add to its train split)."""
    data_dir = tmp_path / "data"
    write_curated(data_dir, SIZES)
    return data_dir


@pytest.fixture
def mlflow_store(tmp_path: Path) -> Iterator[Path]:
    """A workspace root at ``tmp_path`` with its own SQLite MLflow store; the environment is restored afterwards.

    The command line's setup and ``configure`` change the environment, so the whole of it is saved.
    """
    saved = dict(os.environ)
    os.environ.update({
        "LADDER_ROOT": str(tmp_path),
        # No port answers there: nothing may adopt servers other processes started.
        "LADDER_PREFECT_URL": "http://127.0.0.1:9",
        "LADDER_MLFLOW_URL": "http://127.0.0.1:9",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    })
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        yield tmp_path
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class TinyModels:
    """A curated dataset and tiny Llamas scored on it: a briefly trained champion, an exact copy, and a copy made worse."""

    data_dir: Path
    champion: Path
    copy: Path
    worse: Path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Trained once per module: the champion is trained 10 steps; ``worse`` is it with its weights blurred by seeded
    noise, which raises its loss on every document a little (a known regression); ``copy`` is it byte for byte."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.tokenizer.config import TokenizerTrainingConfig
    from tasks.tokenizer.hf import save_hf
    from tasks.tokenizer.train import train_candidate
    from tasks.data.document import iter_split
    from tests.tiny_lm import save_tiny_lm

    root = tmp_path_factory.mktemp("tiny-models")
    data_dir = root / "data"
    # Words the tokenizer cannot learn whole, so that prompts take as many tokens as English text takes the tiny profile's.
    write_curated(data_dir, {**SIZES, "validation": 48, "test": 48}, words=lexicon(2000), line_words=(2, 14))
    tok_cfg = TokenizerTrainingConfig(candidates=["bpe"], vocab_sizes=[TINY_LM.vocab_size])
    tokenizer = root / "tokenizer"
    save_hf(train_candidate("bpe", TINY_LM.vocab_size, (d.text for d in iter_split(data_dir, "train")), tok_cfg), tok_cfg, tokenizer)
    champion = save_tiny_lm(TINY_LM, tokenizer, data_dir, root / "champion", steps=10)
    copy = shutil.copytree(champion, root / "copy")
    model = AutoModelForCausalLM.from_pretrained(champion)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * WORSE_NOISE)
    model.save_pretrained(root / "worse")
    AutoTokenizer.from_pretrained(champion).save_pretrained(root / "worse")
    return TinyModels(data_dir, champion, copy, root / "worse")


@pytest.fixture
def experiment(mlflow_store: Path) -> str:
    """An MLflow experiment in the test's own store, for stand-in registered versions."""
    from mlflow.tracking import MlflowClient

    return MlflowClient().create_experiment("unit", artifact_location=(mlflow_store / "artifacts").as_uri())
