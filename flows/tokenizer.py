"""The tokenizer flow: candidates -> comparison -> selection -> HF tokenizer -> packed shards."""

from __future__ import annotations

from prefect import flow

from app.project import ProjectConfig
from ladder import progress
from ladder.config import load
from ladder.workspace import Workspace
from tasks.data.dataset import resolve_dataset
from tasks.tokenizer.stage import Tokenized, TokenizerResult, pack_shards, publish, train_and_select


@flow(name="tokenizer")
def tokenizer_flow(
    profile: str = "tiny", overrides: list[str] | None = None, dataset_md5: str | None = None
) -> TokenizerResult:
    """Train, compare and select a tokenizer for a dataset version, then pack its splits.

    ``dataset_md5`` defaults to the version in the workspace's ``data.dvc``.
    """
    progress.start("tokenizer")
    ws = Workspace.from_env()
    cfg = load(ProjectConfig, profile, overrides or []).tokenizer
    dataset = resolve_dataset(ws, dataset_md5)
    md5 = dataset.md5
    tokenizer, tokenizer_cached = train_and_select(ws, cfg.training(), dataset)
    shards, shards_cached = pack_shards(ws, cfg.packing, dataset, tokenizer)
    cached = tokenizer_cached and shards_cached
    report = publish(ws, cfg, md5, tokenizer, shards, log_to_mlflow=not cached)
    result = TokenizerResult(
        Tokenized(md5, tokenizer.ref, shards.ref), report["chosen"], report["rule"], report["reason"], report["table"],
        shards.metrics["packing_efficiency"], cached,
    )
    progress.finish("tokenizer", {"chosen": result.chosen, "packing_efficiency": result.packing_efficiency, "cached": cached})
    return result
