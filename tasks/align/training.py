"""What SFT and DPO share: the TRL/Trainer arguments from a config section, DeepSpeed, LoRA, the loss log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.align.config import LoraSettings, TrainerSettings

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import Trainer

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_HISTORY = "log_history.json"


def deepspeed_config(name: str) -> dict[str, Any]:
    """The file's cluster tuning, with the batch, accumulation, clipping and precision left to the Trainer ("auto").

    As for pretraining (``tasks.train.engine``), a file that sets what the config section owns
    is refused: two sources of truth for the batch size would silently disagree.
    """
    from tasks.train.engine import OWNED_KEYS

    path = Path(name) if Path(name).is_absolute() else REPO_ROOT / name
    if not path.is_file():
        raise ValueError(f"DeepSpeed config {path} not found: set align.sft.deepspeed / align.dpo.deepspeed to a JSON file")
    tuning = json.loads(path.read_text())
    if clash := OWNED_KEYS & tuning.keys():
        raise ValueError(f"{path} sets {sorted(clash)}, which come from the align config: remove them from the file")
    auto = {key: "auto" for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")}
    return {**tuning, **auto, "bf16": {"enabled": "auto"}}


def lora_config(settings: LoraSettings) -> LoraConfig | None:
    """PEFT's LoraConfig, or None for full fine-tuning."""
    if not settings.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), task_type="CAUSAL_LM",
    )


def trainer_arguments(settings: TrainerSettings, output_dir: Path) -> dict[str, Any]:
    """Keyword arguments of TRL's SFTConfig / DPOConfig for ``settings``.

    Set explicitly where TRL's defaults do not fit: ``bf16`` (TRL turns it on, which fails on
    CPU), activation (gradient) checkpointing (on in TRL; small models do not need the memory),
    ``report_to`` (the alignment stage logs to MLflow itself, with lineage), no checkpoints.
    """
    if settings.deepspeed and settings.use_cpu:
        raise ValueError("DeepSpeed is set but use_cpu is true: set use_cpu=false for a GPU run, or deepspeed=null")
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "learning_rate": settings.lr,
        "num_train_epochs": settings.epochs,
        "lr_scheduler_type": "linear",
        "warmup_steps": settings.warmup_ratio,  # a float below 1 is a share of the steps
        "weight_decay": settings.weight_decay,
        "max_grad_norm": settings.max_grad_norm,
        "bf16": settings.bf16,
        "use_cpu": settings.use_cpu,
        "deepspeed": deepspeed_config(settings.deepspeed) if settings.deepspeed else None,
        "activation_checkpointing": False,  # transformers 5's name for gradient_checkpointing
        "seed": settings.seed,
        "data_seed": settings.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def losses(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The per-step training records of a Trainer's ``log_history`` (numbers only, the final summary left out)."""
    return [
        {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
        for record in history
        if "loss" in record and "step" in record
    ]


def quiet(trainer: Trainer) -> Trainer:
    """The trainer without its stdout printer: the loss log goes to MLflow with the run's lineage instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def train_and_save(trainer: Trainer, tokenizer: Any, out: Path) -> tuple[Any, float, list[dict[str, float]]]:
    """Train, save the model to ``out/model`` and the loss log beside it; drop the trainer's scratch files.

    Returns the trainer's result, the training seconds and the per-step loss records.
    """
    import shutil
    import time

    from tasks.align.checkpoints import MODEL_DIR, save_model

    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    save_model(trainer.model, tokenizer, out / MODEL_DIR)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    history = losses(trainer.state.log_history)
    (out / LOG_HISTORY).write_text(json.dumps(history, indent=1))
    return result, seconds, history
