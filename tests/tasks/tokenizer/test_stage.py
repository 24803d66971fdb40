"""The stage contract around the tokenizer stage: dataset version, cache hits, two artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import importlib.metadata

from ladder.artifacts import StageOutput, code_fingerprint
from ladder.config import Section
from ladder.workspace import Workspace
from tasks.data.curate import CODE as DATA_CODE
from tasks.data.curate import STAGE as DATA_STAGE
from tasks.data.dataset import Dataset
from tasks.data.version import dataset_version
from tasks.tokenizer.config import TokenizerConfig
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


class DataStandIn(Section):
    """The data stage's config stands for itself here: only its version and code matter."""

    corpus: str = "tiny"


def test_a_change_to_the_tokenizer_code_rebuilds_it_and_its_shards_while_the_data_stays_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_fingerprints: None
) -> None:
    ws = Workspace(tmp_path)
    write_curated(ws.data, {"train": 20, "validation": 4, "test": 2})
    dataset = Dataset("md5-a", ws.data, "test")
    cfg = TokenizerConfig(candidates=["bpe"], vocab_sizes=[300], packing={"seq_len": 32, "num_workers": 1})

    def run() -> tuple[str, bool, str, bool, str, bool]:
        data, data_cached = ws.store().run_stage(DATA_STAGE, DataStandIn(), {"corpus": "tiny"}, lambda out: StageOutput(), code=DATA_CODE)
        tokenizer, tok_cached = train_and_select.fn(ws, cfg.training(), dataset)
        shards, shards_cached = pack_shards.fn(ws, cfg.packing, dataset, tokenizer)
        return data.version, data_cached, tokenizer.version, tok_cached, shards.version, shards_cached

    data, _, tokenizer, _, shards, _ = run()
    assert run() == (data, True, tokenizer, True, shards, True)
    # A new tokenizers release is a change to the code that builds the tokenizer stage (as an edit of
    # tasks/tokenizer would be): that stage and the shards packed with it rebuild; the data does not.
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == "tokenizers" else real(name))
    code_fingerprint.cache_clear()
    again = run()
    assert again[:2] == (data, True)
    assert again[2] != tokenizer and not again[3] and again[4] != shards and not again[5]
