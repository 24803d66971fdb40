"""Which attention path training takes on which device, and the mask each path is given."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from models.llama import VARLEN_KERNEL
from tasks.train.engine import attention_kernel
from tasks.train.loader import PackedLoader
from tasks.train.shards import PackedShards
from train_fixtures import SEQ_LEN

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_flex_on_a_gpu_and_on_cpu_varlen_in_bf16_and_dense_in_fp32() -> None:
    assert attention_kernel("auto", CPU, "sdpa", "bf16") == VARLEN_KERNEL
    assert attention_kernel("auto", CPU, "sdpa", "fp32") == "sdpa"
    assert attention_kernel("dense", CPU, "sdpa", "bf16") == "sdpa"
    assert attention_kernel("auto", CUDA, "sdpa", "bf16") == "flex_attention"
    assert attention_kernel("dense", CUDA, "eager", "bf16") == "eager"
    assert attention_kernel("flex", CUDA, "sdpa", "fp32") == "flex_attention"


def test_flex_on_cpu_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="no FlexAttention backward on CPU.*dense or auto"):
        attention_kernel("flex", CPU, "sdpa", "bf16")


def test_flex_inputs_carry_a_block_mask_and_no_dense_one(shards_root: Path) -> None:
    batch = next(iter(PackedLoader(PackedShards(shards_root / "train"), 4, seed=0)))
    mask = batch.model_inputs("flex_attention")["attention_mask"]
    assert isinstance(mask, BlockMask)
    assert mask.shape == (4, 1, SEQ_LEN, SEQ_LEN)
    # The same pairs as the dense mask the other kernels get.
    b, q, kv = torch.meshgrid(torch.arange(4), torch.arange(SEQ_LEN), torch.arange(SEQ_LEN), indexing="ij")
    assert torch.equal(mask.mask_mod(b, torch.zeros_like(b), q, kv), batch.attention_mask[:, 0])
    assert batch.model_inputs("sdpa")["attention_mask"].shape == (4, 1, SEQ_LEN, SEQ_LEN)
