"""The stage contract around the tokenizer stage: dataset version, cache hits, two artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ladder.workspace import Workspace
from tasks.tokenizer.config import TokenizerConfig
from tasks.data.dataset import Dataset
from tasks.data.version import dataset_version
from tasks.tokenizer.stage import pack_shards, train_and_select

from tokenizer_corpus import write_curated


def test_a_workspace_without_a_dataset_version_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run `ladder data` first"):
        dataset_version(Workspace(tmp_path))


def test_unchanged_inputs_are_a_cache_hit_and_packing_changes_only_the_shards(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    write_curated(ws.data, {"train": 30, "validation": 6, "test": 3})
    # Stand-ins for two versions: the stage reads the directory it is given and names the md5.
    a, b = Dataset("md5-a", ws.data, "test"), Dataset("md5-b", ws.data, "test")
    cfg = TokenizerConfig(candidates=["bpe"], vocab_sizes=[300], packing={"seq_len": 32, "num_workers": 1})
    tokenizer, cached = train_and_select.fn(ws, cfg.training(), a)
    assert not cached and tokenizer.manifest["inputs"] == {"dataset": "md5-a"}
    again, cached = train_and_select.fn(ws, cfg.training(), a)
    assert cached and again.version == tokenizer.version
    other, cached = train_and_select.fn(ws, cfg.training(), b)
    assert not cached and other.version != tokenizer.version

    shards, cached = pack_shards.fn(ws, cfg.packing, a, tokenizer)
    assert not cached and shards.manifest["inputs"] == {"dataset": "md5-a", "tokenizer": tokenizer.version}
    assert shards.counts["train"]["documents"] == 30
    assert pack_shards.fn(ws, cfg.packing, a, tokenizer)[1]
    repacked = cfg.model_copy(update={"packing": cfg.packing.model_copy(update={"seq_len": 64})})
    assert repacked.training() == cfg.training()
    assert not pack_shards.fn(ws, repacked.packing, a, tokenizer)[1]
