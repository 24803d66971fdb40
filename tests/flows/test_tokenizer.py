"""The tokenizer flow end to end: real Prefect (test harness), MLflow (SQLite store), worker processes."""

from __future__ import annotations

import random

from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from transformers import AutoTokenizer

from flows.tokenizer import tokenizer_flow
from ladder.tracking import experiment_id
from ladder.workspace import Workspace
from tasks.data.document import Document
from tasks.data.version import dataset_version, run_dvc
from tasks.tokenizer.stage import SHARDS_DIR, TOKENIZER_DIR
from tasks.train.shards import PackedShards

# Two candidates, one size, short rows: the flow's wiring is under test, not the tokenizers.
OVERRIDES = ["tokenizer.candidates=[bpe,unigram]", "tokenizer.vocab_sizes=[320]", "tokenizer.packing.seq_len=64"]
WORDS = "to be or not that is the question whether tis nobler in mind suffer slings arrows café naïve".split()


def _write_curated(ws: Workspace) -> str:
    """A curated dataset in ``data/``, versioned with `dvc add` as a user would; returns its md5."""
    data_dir = ws.data
    rng = random.Random(0)
    for split, count in {"train": 60, "validation": 10, "test": 6}.items():
        directory = data_dir / "curated" / split
        directory.mkdir(parents=True)
        docs = [
            Document(f"{split}/{i}#0", ("verse", "prose")[i % 2],
                     "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(rng.randint(5, 30))))
            for i in range(count)
        ]
        (directory / "part-00000.jsonl").write_text("".join(d.to_json() + "\n" for d in docs), encoding="utf-8")
    run_dvc(ws.root, "add", "-q", "data")
    return dataset_version(ws)


def _runs(ws: Workspace) -> list:
    return MlflowClient().search_runs([experiment_id(ws)], filter_string="tags.`ladder.stage` = 'tokenizer'")


def test_flow_selects_saves_packs_tracks_and_caches(prefect_harness: None, workspace: Workspace) -> None:
    md5 = _write_curated(workspace)
    first = tokenizer_flow(overrides=OVERRIDES)
    store = workspace.store()

    assert not first.cached
    assert first.chosen in {"bpe-320", "unigram-320"}
    assert first.rule.startswith("maximise bytes_per_token")
    assert {row["candidate"] for row in first.table} == {"bpe-320", "unigram-320"}
    assert 0.9 < first.packing_efficiency <= 1.0
    hf = AutoTokenizer.from_pretrained(store.get(first.tokenized.tokenizer).path / TOKENIZER_DIR)
    assert hf.decode(hf("to be  or\tnot")["input_ids"]) == "to be  or\tnot"
    for split, count in {"train": 60, "validation": 10, "test": 6}.items():
        shards = PackedShards(store.get(first.tokenized.shards).path / SHARDS_DIR / split)
        assert shards.seq_len == 64 and len(shards.docs) == count

    # MLflow: one run with lineage to the dataset version and the comparison files.
    (run,) = _runs(workspace)
    # One key for the dataset, whichever stage made or read it.
    assert run.data.tags["ladder.data.md5"] == md5 and "ladder.input.dataset" not in run.data.tags
    assert run.data.tags["ladder.artifact_version"] == first.tokenized.tokenizer.version
    logged = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"comparison.csv", "rank_frequency.png", "tokenizer", "selection.txt"} <= logged
    assert "packing_efficiency" in run.data.metrics

    # Prefect: the comparison is a table artifact.
    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tokenizer-comparison"])))
    assert tables and tables[0].type == "table"

    # An unchanged rerun is a cache hit: same artifacts, nothing rewritten, nothing logged.
    manifests = {p: p.stat().st_mtime_ns for p in workspace.artifacts.rglob("manifest.json")}
    again = tokenizer_flow(overrides=OVERRIDES, dataset_md5=md5)
    assert again.cached
    assert again.tokenized == first.tokenized
    assert {p: p.stat().st_mtime_ns for p in workspace.artifacts.rglob("manifest.json")} == manifests
    assert len(_runs(workspace)) == 1

    # A new sequence length repacks with the same tokenizer, without retraining it.
    repacked = tokenizer_flow(overrides=[*OVERRIDES, "tokenizer.packing.seq_len=32"])
    assert not repacked.cached
    assert repacked.tokenized.tokenizer == first.tokenized.tokenizer
    assert repacked.tokenized.shards != first.tokenized.shards
    assert PackedShards(workspace.store().get(repacked.tokenized.shards).path / SHARDS_DIR / "train").seq_len == 32
