"""The project's config tree: one section per stage, each defined beside the stage's code."""

from __future__ import annotations

from pydantic import Field

from ladder.config import Section
from tasks.data.config import DataConfig
from tasks.tokenizer.config import TokenizerConfig


class ProjectConfig(Section):
    """Every stage's section; a flow reads the sections it needs."""

    data: DataConfig = Field(default_factory=DataConfig, description="Data stage: ingest to versioned dataset.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer stage: candidates, selection, packed shards.")
