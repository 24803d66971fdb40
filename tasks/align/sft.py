"""Supervised fine-tuning with TRL's SFTTrainer: response-only loss, packed rows that keep items apart.

TRL tokenizes and collates by itself, but its packing (``packing_strategy="bfd"``) is
padding-free and isolates the packed items only under FlashAttention (GPU); on CPU it would
let them attend to each other. So the rows are made here (``tasks.align.encode``: response-only
labels, best-fit-decreasing packing) and handed to SFTTrainer already tokenized
(``skip_prepare_dataset``), with the collator that masks attention per item. The trainer,
optimizer, schedule, LoRA, DeepSpeed and loss are TRL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Code, StageOutput
from ladder.workspace import Workspace
from models.llama import IGNORE_INDEX
from tasks.align.checkpoints import ModelRef, load_model
from tasks.align.config import SFTSettings
from tasks.align.encode import PackedCollator, encode, encode_text, pack, pad_id
from tasks.align.instructions import InstructionSet, Item
from tasks.align.training import lora_config, quiet, train_and_save, trainer_arguments

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import SFTTrainer

STAGE = "sft"
CODE = Code(("tasks.align", "models"), ("trl", "transformers", "torch", "peft"))


def sft_trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], cfg: SFTSettings,
                output_dir: Path) -> SFTTrainer:
    """TRL's SFTTrainer on already tokenized rows (``tasks.align.encode.pack``), batched by ``PackedCollator``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **trainer_arguments(cfg, output_dir),
        max_length=cfg.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    return quiet(SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=PackedCollator(pad_id(tokenizer), model.config._attn_implementation),
        peft_config=lora_config(cfg.lora),
    ))


def run_sft(base_dir: Path, items: list[Item], replay: list[str], cfg: SFTSettings, out: Path) -> StageOutput:
    """Fine-tune the model in ``base_dir`` on ``items`` and ``replay`` text; write the model to ``out/model`` and the loss log."""
    model, tokenizer = load_model(base_dir)
    encoded = [encode(tokenizer, item.messages, item.response) for item in items]
    encoded += [encode_text(tokenizer, text, cfg.max_length) for text in replay]
    rows, drops = pack(encoded, cfg.max_length, cfg.packing)
    if not rows:
        raise ValueError(
            f"every one of {len(items)} instruction items is longer than align.sft.max_length={cfg.max_length} tokens: raise it"
        )
    trainer = sft_trainer(model, tokenizer, rows, cfg, out / "trainer")
    result, seconds, history = train_and_save(trainer, tokenizer, out)
    tokens = sum(len(row["input_ids"]) for row in rows)
    counts = {
        "items": len(items),
        "replay_passages": len(replay),
        "dropped": dict(drops),
        "rows": len(rows),
        "tokens": tokens,
        "labelled_tokens": sum(sum(1 for t in row["labels"] if t != IGNORE_INDEX) for row in rows),
        # Real tokens per token of row capacity: what packing saves over one item per max_length row.
        "packing_efficiency": tokens / (len(rows) * cfg.max_length),
    }
    metrics = {
        "train_loss": float(result.training_loss),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "steps": int(result.global_step),
        "train_seconds": seconds,
        "tokens_per_second": tokens * cfg.epochs / seconds if seconds > 0 else float("nan"),
    }
    return StageOutput(counts=counts, metrics=metrics)


@task(name="train-sft", cache_policy=NO_CACHE)
def train_sft(ws: Workspace, cfg: SFTSettings, base: ModelRef, instructions: InstructionSet) -> ModelRef:
    """The SFT model of this base model, instruction set and config (trained once, then a cache hit)."""
    store = ws.store()
    inputs = {"base_model": base.version, "instructions": instructions.version}
    artifact, _ = store.run_stage(
        STAGE,
        cfg,
        inputs,
        lambda out: run_sft(base.model_dir, instructions.items("train"), instructions.replay(), cfg, out),
        code=CODE,
    )
    return ModelRef.of_artifact(artifact)
