"""The models alignment reads and writes: Hugging Face checkpoint directories with their tokenizer inside.

The base model is, in order: a directory the caller names; the registry's champion (the
evaluation stage's ``@champion`` alias, downloaded once); the latest ``train`` artifact's
model. SFT and DPO models are ``model/`` inside their stage artifacts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Artifact, hash_files
from ladder.config import content_hash
from ladder.tags import LINEAGE_PREFIX
from ladder.workspace import Workspace

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tasks.train.stage import TrainedModel

MODEL_DIR = "model"


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint directory and the version that names it in stage inputs and lineage."""

    model_dir: Path
    version: str  # the stage artifact's version, or a content hash of the files for a model from elsewhere
    registry_version: str | None = None  # "<registered model>/<version>" when it came from the registry
    training_run_id: str | None = None  # the MLflow run that produced it, when known
    artifact: Artifact | None = None  # the stage artifact holding it (SFT and DPO models)

    @classmethod
    def of_artifact(cls, artifact: Artifact) -> "ModelRef":
        return cls(artifact.path / MODEL_DIR, artifact.version, artifact=artifact)


def check_model_dir(model_dir: Path) -> None:
    """A ValueError unless ``model_dir`` holds an HF checkpoint with a chat-capable tokenizer."""
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a Hugging Face checkpoint (no config.json): pass a model directory")
    if not (model_dir / "tokenizer_config.json").is_file():
        raise ValueError(f"no tokenizer in {model_dir}: copy the tokenizer's files into the model directory")


def model_version(model_dir: Path) -> str:
    """A content hash of every file of the checkpoint: the same weights and tokenizer, the same version."""
    return content_hash(hash_files(model_dir))


def load_model(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The fp32 model and its tokenizer (chat template included)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer in {model_dir} has no chat template: build it with the tokenizer stage (tasks.tokenizer.hf)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """A plain HF checkpoint with its tokenizer; LoRA adapters are merged into the weights first."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _download_champion(ws: Workspace, name: str, version: str) -> Path:
    """The champion's checkpoint with its tokenizer files beside the weights, downloaded once per version."""
    from tasks.evals import registry

    final = ws.state / "registry" / name / version
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        model_dir, tokenizer_dir = registry.download(name, version, Path(tmp) / "download")
        for file in tokenizer_dir.iterdir():
            if file.is_file():
                shutil.copy2(file, model_dir / file.name)
        os.rename(model_dir, final)
    return final


@task(name="resolve-base-model", cache_policy=NO_CACHE)
def resolve_base(
    ws: Workspace, registered_model: str, trained: TrainedModel | None, base_model_dir: str | None
) -> ModelRef:
    """The model to align: ``trained``, else ``base_model_dir``, else the registry's champion, else
    the latest pretrained model."""
    from tasks.evals import registry
    from tasks.evals.stage import resolve_candidate

    if trained is None and base_model_dir is None:
        champion = registry.alias_version(registered_model, registry.CHAMPION)
        if champion is not None:
            found = registry.resolve(f"{registered_model}/{champion}")
            path = _download_champion(ws, registered_model, champion)
            check_model_dir(path)
            run = found.tags.get(f"{LINEAGE_PREFIX}training_runs")
            return ModelRef(path, model_version(path), f"{registered_model}/{champion}", run)
    candidate = resolve_candidate.fn(ws, trained, base_model_dir, None)
    check_model_dir(candidate.model_dir)
    # A model a stage trained is named by its artifact's version, so lineage walks on from it.
    version = candidate.artifact.version if candidate.artifact else model_version(candidate.model_dir)
    return ModelRef(candidate.model_dir, version, training_run_id=candidate.training_run_id)
