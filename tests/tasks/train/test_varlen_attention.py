"""train.attention=varlen: no mask, each document attended on its own. It keeps packed
documents apart as the dense mask does, and training with it follows the dense path's loss
curve step for step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.llama import BUCKET_TOKENS, VARLEN_KERNEL, DocumentSegments, ModelConfig, build_model, document_segments
from tasks.train.continued import resolve_model_config
from tasks.train.engine import TrainEngine, attention_kernel, init_distributed
from tasks.train.loader import PackedLoader
from tasks.train.shards import PackedShards
import test_no_cross_contamination as packing
from train_fixtures import tiny_config

# The packed rows of the dense paths' test (A after B, after C, alone), made again for this module.
batches = packing.batches

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_varlen_is_the_same_kernel_on_any_device() -> None:
    assert attention_kernel("varlen", CPU, "sdpa", "bf16") == VARLEN_KERNEL
    assert attention_kernel("varlen", CUDA, "eager", "bf16") == VARLEN_KERNEL


def test_varlen_inputs_carry_segments_and_no_mask(shards_root: Path) -> None:
    batch = next(iter(PackedLoader(PackedShards(shards_root / "train"), 4, seed=0)))
    inputs = batch.model_inputs(attention_kernel("varlen", CPU, "sdpa", "bf16"))
    assert "attention_mask" not in inputs
    assert isinstance(inputs["document_segments"], DocumentSegments)


@pytest.mark.parametrize("bucket_tokens", [8, BUCKET_TOKENS])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_packed_document_sees_only_itself(batches, qk_norm: bool, bucket_tokens: int) -> None:
    """Each document on its own (8-token buckets) and, as the loader's default buckets take these
    short rows, row by row with the mask."""
    model = build_model(ModelConfig(vocab_size=packing.VOCAB, qk_norm=qk_norm, max_seq_len=packing.SEQ_LEN), seed=0).eval()
    model.set_attn_implementation(attention_kernel("varlen", CPU, "sdpa", "bf16"))
    logits = {}
    for name, (batch, start) in batches.items():
        inputs = batch.model_inputs(VARLEN_KERNEL)
        segments = document_segments(batch.doc_index, bucket_tokens)
        assert (segments.rows_mask is None) == (bucket_tokens == 8)
        logits[name] = packing._logits_of_a(model, batch, start, {**inputs, "document_segments": segments})
    torch.testing.assert_close(logits["B then A"], logits["C then A"], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits["B then A"], logits["A alone"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("bf16", 2e-3)])
def test_training_follows_the_dense_loss_curve(shards_root: Path, precision: str, tolerance: float) -> None:
    """Ten optimizer steps (two micro-batches each), GQA model: the same losses as dense sdpa."""
    curves = {}
    for attention in ("dense", "varlen"):
        cfg = tiny_config(
            attention=attention, precision=precision, global_batch_size=8, micro_batch_size=4,
            model={"n_heads": 4, "n_kv_heads": 2},
        )
        shards = PackedShards(shards_root / "train")
        engine = TrainEngine(build_model(resolve_model_config(cfg, shards), seed=0), cfg, init_distributed())
        losses = []
        for _, batch in zip(range(10 * cfg.grad_accumulation), PackedLoader(shards, cfg.micro_batch_size, seed=0)):
            loss, _ = engine.loss(batch, z_loss=0.0)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        curves[attention] = torch.tensor(losses)
    assert curves["dense"][-1] < curves["dense"][0] - 0.3  # it learns, so later steps test the updates too
    torch.testing.assert_close(curves["varlen"], curves["dense"], rtol=0, atol=tolerance)
