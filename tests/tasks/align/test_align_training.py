"""Trainer settings shared by SFT and DPO: CPU-safe precision, DeepSpeed files, LoRA merged into a plain checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.align.config import DPOSettings, LoraSettings, SFTSettings
from tasks.align.dpo import run_dpo
from tasks.align.instructions import Item
from tasks.align.preferences import Pair
from tasks.align.sft import run_sft
from tasks.align.training import deepspeed_config, trainer_arguments


def test_trainer_arguments_keep_cpu_runs_in_fp32_and_report_nowhere(tmp_path: Path) -> None:
    args = trainer_arguments(SFTSettings(), tmp_path)
    assert (args["bf16"], args["use_cpu"], args["report_to"], args["deepspeed"]) == (False, True, [], None)
    with pytest.raises(ValueError, match="use_cpu"):
        trainer_arguments(SFTSettings(deepspeed="infra/deepspeed/zero2.json"), tmp_path)


def test_deepspeed_files_leave_batch_and_precision_to_the_config(tmp_path: Path) -> None:
    config = deepspeed_config("infra/deepspeed/zero2.json")
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    assert config["bf16"] == {"enabled": "auto"}
    clashing = tmp_path / "ds.json"
    clashing.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 1}}))
    with pytest.raises(ValueError, match="train_batch_size"):
        deepspeed_config(str(clashing))
    with pytest.raises(ValueError, match="not found"):
        deepspeed_config("infra/deepspeed/zero9.json")


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_lora_adapters_are_merged_into_a_plain_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    lora = LoraSettings(enabled=True, r=4, alpha=8)
    items = [Item(f"user:{i}", "user", -1, [{"role": "user", "content": f"Say {w}."}], w, "test") for i, w in enumerate(["yes", "no"])]
    sft_out = tmp_path / "sft"
    run_sft(model_dir, items, [], SFTSettings(lora=lora, epochs=1, lr=1e-2, warmup_ratio=0.0), sft_out)
    pairs = [Pair("user:0", "user", items[0].messages, "yes", "no", 1.0, 0.0)]
    dpo_out = tmp_path / "dpo"
    run_dpo(sft_out / "model", pairs, DPOSettings(lora=lora, epochs=1, lr=1e-2, warmup_ratio=0.0), dpo_out)

    before = _weights(model_dir)
    for out in (sft_out, dpo_out):
        assert not (out / "model" / "adapter_config.json").exists()
        after = _weights(out / "model")
        assert after.keys() == before.keys()  # no lora_A / lora_B left: a plain Llama checkpoint
        assert any(not torch.equal(after[k], before[k]) for k in before)
        assert (out / "model" / "tokenizer_config.json").is_file()
