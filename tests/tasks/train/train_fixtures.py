"""Synthetic packed shards a tiny model learns in tens of steps, the tiny training config, and
continued pretraining's inputs (a base model, old data to replay, new data with added tokens).

Documents follow a fixed next-token map with probability 0.75 and a uniform token otherwise,
so the loss falls fast to a floor well above zero (about 1.6 nats): relative comparisons of
final losses stay meaningful, and a random batch (about ln 64 = 4.2 nats) stands out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ladder.config import build
from tasks.tokenizer.shards import write_packed
from tasks.train.config import TrainConfig
from tasks.train.loop import train

VOCAB = 64
PAD, BOUNDARY = 0, 1
SEQ_LEN = 32
SOURCES = ("plays", "sonnets", "letters")
NEW_TOKENS = ("<new_a>", "<new_b>")  # continued pretraining adds them to the tokenizer


def documents(count: int, seed: int, prefix: str = "doc", vocab: int = VOCAB) -> Iterator[tuple[dict[str, Any], list[int]]]:
    rng = np.random.default_rng(seed)
    successor = (np.arange(vocab) * 7 + 3) % (vocab - 2) + 2
    for i in range(count):
        token = int(rng.integers(2, vocab))
        ids = [token]
        for _ in range(int(rng.integers(20, 60)) - 1):
            token = int(successor[token]) if rng.random() < 0.75 else int(rng.integers(2, vocab))
            ids.append(token)
        record = {"id": f"{prefix}-{seed}-{i}", "source": SOURCES[i % len(SOURCES)], "meta": {"quality": float(rng.random())}}
        yield record, ids


def write_shards(root: Path, train_docs: int = 600, val_docs: int = 60, prefix: str = "doc", vocab: int = VOCAB) -> Path:
    """``root/train`` and ``root/validation`` (the layout the tokenizer stage writes)."""
    write_packed(root / "train", documents(train_docs, 1, prefix, vocab), SEQ_LEN, PAD, BOUNDARY, vocab)
    write_packed(root / "validation", documents(val_docs, 2, prefix, vocab), SEQ_LEN, PAD, BOUNDARY, vocab)
    return root


def write_tokenizer(directory: Path) -> Path:
    """A word-level HF tokenizer whose ids match the synthetic shards (t2 ... t63)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|pad|>": PAD, "<|endoftext|>": BOUNDARY, **{f"t{i}": i for i in range(2, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>").save_pretrained(directory)
    return directory


def tiny_config(**overrides: Any) -> TrainConfig:
    """About 90k parameters, batches of 8 x 32 tokens, fp32 (the fastest on CPU at this size)."""
    tree: dict[str, Any] = {
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "intermediate_size": 128, "max_seq_len": 64},
        "global_batch_size": 8,
        "micro_batch_size": 8,
        "max_steps": 60,
        "precision": "fp32",
        "log_every": 5,
        "peak_tflops": 0.1,
        "schedule": {"warmup_steps": 10},
        "checkpoint": {"every_steps": 10, "keep_last": 2},
        "spike_guard": {"warmup_steps": 15},
        "eval": {"every_steps": 1000, "batches": 4},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key] = {**tree[key], **value}
        else:
            tree[key] = value
    return build(TrainConfig, tree)


@dataclass(frozen=True)
class Continued:
    """Continued pretraining's inputs: a base model trained on old shards, new shards with two added tokens."""

    old: Path  # shards root of the old data, replayed
    new: Path  # shards root of the new data; its vocabulary has NEW_TOKENS besides the base model's
    base_model: Path  # save_pretrained directory, with its tokenizer

    def config(self, **overrides: Any) -> TrainConfig:
        """``tiny_config`` that starts from the base model, adds the new tokens and replays a quarter old data."""
        return tiny_config(
            init={"from_dir": str(self.base_model), "new_tokens": list(NEW_TOKENS)},
            replay={"shards_dir": str(self.old / "train"), "share": 0.25},
            **overrides,
        )


def write_continued(root: Path) -> Continued:
    """Old and new shards under ``root`` and a base model trained 10 steps on the old ones."""
    old = write_shards(root / "old", train_docs=200, val_docs=20, prefix="old")
    base = train(tiny_config(max_steps=10), old / "train", old / "validation", root / "base", write_tokenizer(root / "tok"))
    new = write_shards(root / "new", train_docs=200, val_docs=20, prefix="new", vocab=VOCAB + len(NEW_TOKENS))
    return Continued(old, new, Path(base["model_dir"]))


@contextmanager
def restored_environ() -> Iterator[os._Environ[str]]:
    """``os.environ`` as it was on entry, after the block (an in-process run sets RANK and friends)."""
    saved = dict(os.environ)
    try:
        yield os.environ
    finally:
        os.environ.clear()
        os.environ.update(saved)
