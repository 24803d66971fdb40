"""Proof that packing leaks nothing across documents: document A's logits do not depend on
what was packed before it, with the model and the loader's inputs that training uses, on
every attention path: the dense mask (sdpa, eager) and the block-sparse one (FlexAttention).

The control (no document mask, position ids still restarted) must show a difference, so
this test fails if the mask stops doing its job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.llama import ModelConfig, build_model
from tasks.tokenizer.shards import write_packed
from tasks.train.loader import Batch, PackedLoader
from tasks.train.shards import PackedShards

SEQ_LEN, PAD, BOUNDARY, VOCAB = 40, 0, 1, 64
_rng = np.random.default_rng(0)
DOC_A, DOC_B, DOC_C = (_rng.integers(2, VOCAB, n).tolist() for n in (13, 9, 17))
# Where A starts in each packed row: after B and its boundary token, after C and its, or at 0.
ROWS = {"B then A": ([DOC_B, DOC_A], len(DOC_B) + 1), "C then A": ([DOC_C, DOC_A], len(DOC_C) + 1), "A alone": ([DOC_A], 0)}


def _packed_batch(directory: Path, docs: list[list[int]]) -> Batch:
    records = [({"id": f"doc-{i}", "source": "synthetic"}, ids) for i, ids in enumerate(docs)]
    write_packed(directory, records, SEQ_LEN, PAD, BOUNDARY, VOCAB)
    return next(iter(PackedLoader(PackedShards(directory), batch_size=1, seed=0, shuffle=False)))


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict[str, tuple[Batch, int]]:
    root = tmp_path_factory.mktemp("contamination")
    return {name: (_packed_batch(root / str(i), docs), start) for i, (name, (docs, start)) in enumerate(ROWS.items())}


def _logits_of_a(model, batch: Batch, start: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    span = slice(start, start + len(DOC_A) + 1)  # A's tokens and its boundary token
    assert batch.input_ids[0, span].tolist() == [*DOC_A, BOUNDARY]
    with torch.no_grad():
        return model(**inputs).logits[0, span]  # (len(A) + 1, V)


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "flex_attention"])
def test_packed_document_sees_only_itself(batches, attn_implementation: str, qk_norm: bool) -> None:
    cfg = ModelConfig(vocab_size=VOCAB, qk_norm=qk_norm, max_seq_len=SEQ_LEN)
    model = build_model(cfg, seed=0).eval()
    model.set_attn_implementation(attn_implementation)
    # FlexAttention run eagerly: the same mask semantics without its kernel's 30 s compile.
    with torch.compiler.set_stance("force_eager" if attn_implementation == "flex_attention" else "default"):
        masked = {
            name: _logits_of_a(model, batch, start, batch.model_inputs(attn_implementation))
            for name, (batch, start) in batches.items()
        }
        # Control: plain causal attention, same restarted positions. A now sees B or C.
        unmasked = {
            name: _logits_of_a(model, batch, start, {"input_ids": batch.input_ids, "position_ids": batch.position_ids})
            for name, (batch, start) in batches.items()
            if name != "A alone"
        }
    torch.testing.assert_close(masked["B then A"], masked["C then A"], rtol=0, atol=1e-5)
    torch.testing.assert_close(masked["B then A"], masked["A alone"], rtol=0, atol=1e-5)
    assert (unmasked["B then A"] - unmasked["C then A"]).abs().max() > 1e-3
