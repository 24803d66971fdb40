"""The project's config tree: one section per stage, each defined beside the stage's code.

Its named profiles (``tiny``; ``--profile NAME``) are the YAML files of ``app/profiles/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ladder.config import Section
from tasks.align.config import AlignConfig
from tasks.data.config import DataConfig
from tasks.evals.config import EvalConfig
from tasks.scaling.ladder import ScalingConfig
from tasks.tokenizer.config import TokenizerConfig
from tasks.train.config import TrainConfig


class ProjectConfig(Section):
    """Every stage's section; a flow reads the sections it needs."""

    profiles_dir: ClassVar[Path | None] = Path(__file__).parent / "profiles"

    data: DataConfig = Field(default_factory=DataConfig, description="Data stage: ingest to versioned dataset.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer stage: candidates, selection, packed shards.")
    evals: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation stage: held-out eval suite, release gate, registry.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training stage: DeepSpeed loop, checkpoints, spike guard.")
    align: AlignConfig = Field(default_factory=AlignConfig, description="Alignment stage: instruction data, SFT, DPO, alignment tax.")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Scaling stage: the ladder's rungs, fit, target prediction and gate.")
