"""Hand-made shards and tokenizer put into a workspace's store, as the tokenizer stage would leave them.

The train and scaling flows take the tokenizer stage's hand-off (``Tokenized``), which names
artifacts, not paths: a test that writes its own small shards stores them first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ladder.artifacts import StageOutput
from ladder.workspace import Workspace
from tasks.tokenizer.config import PackingConfig, TokenizerTrainingConfig
from tasks.tokenizer.stage import (
    SHARDS_CODE,
    SHARDS_DIR,
    SHARDS_STAGE,
    TOKENIZER_CODE,
    TOKENIZER_DIR,
    TOKENIZER_STAGE,
    Tokenized,
)


def store_tokenized(ws: Workspace, shards_dir: Path, tokenizer_dir: Path, dataset_md5: str) -> Tokenized:
    """``shards_dir`` (``train/`` and ``validation/``) and ``tokenizer_dir`` as ``shards`` and ``tokenizer`` artifacts."""
    store = ws.store()

    def copy(source: Path, name: str):  # noqa: ANN202 - a stage builder
        def build(out: Path) -> StageOutput:
            shutil.copytree(source, out / name)
            return StageOutput()
        return build

    tokenizer, _ = store.run_stage(
        TOKENIZER_STAGE, TokenizerTrainingConfig(), {"dataset": dataset_md5, "files": str(tokenizer_dir)},
        copy(tokenizer_dir, TOKENIZER_DIR), code=TOKENIZER_CODE,
    )
    shards, _ = store.run_stage(
        SHARDS_STAGE, PackingConfig(), {"dataset": dataset_md5, "tokenizer": tokenizer.version, "files": str(shards_dir)},
        copy(shards_dir, SHARDS_DIR), code=SHARDS_CODE,
    )
    return Tokenized(dataset_md5, tokenizer.ref, shards.ref)
