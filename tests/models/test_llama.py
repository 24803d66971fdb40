"""The model definition: exact counts, determinism, the loss, the masks, and HF round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from models.llama import (
    IGNORE_INDEX,
    ModelConfig,
    attention_mask_for,
    build_model,
    causal_lm_loss,
    count_params,
    document_block_mask,
    document_segments,
    flops_per_token,
    varlen_kernel,
)

VOCAB = 97


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("tie_embeddings", [False, True])
@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_count_params_equals_built_model(qk_norm: bool, tie_embeddings: bool, n_kv_heads: int) -> None:
    cfg = ModelConfig(vocab_size=VOCAB, qk_norm=qk_norm, tie_embeddings=tie_embeddings, n_kv_heads=n_kv_heads)
    model = build_model(cfg)
    counts = count_params(cfg)
    # parameters() yields a tied weight once, as the analytic count does.
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    if not tie_embeddings:
        embedding += model.get_output_embeddings().weight.numel()
    assert counts["embedding"] == embedding
    assert counts["non_embedding"] == counts["total"] - embedding


def test_qk_norm_selects_a_model_with_query_and_key_norms() -> None:
    plain = build_model(ModelConfig(vocab_size=VOCAB))
    normed = build_model(ModelConfig(vocab_size=VOCAB, qk_norm=True))
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert type(normed).__name__ == "Qwen3ForCausalLM"
    attention = normed.model.layers[0].self_attn
    assert attention.q_norm.weight.shape == (normed.config.head_dim,)
    assert not hasattr(plain.model.layers[0].self_attn, "q_norm")


def test_build_is_deterministic_and_leaves_the_callers_rng_alone() -> None:
    cfg = ModelConfig(vocab_size=VOCAB, init_std=0.05)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(cfg, seed=7)
    assert torch.equal(torch.rand(1), before)
    second = build_model(cfg, seed=7)
    other = build_model(cfg, seed=8)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.model.embed_tokens.weight, other.model.embed_tokens.weight)
    std = first.model.layers[0].mlp.up_proj.weight.std().item()
    assert std == pytest.approx(0.05, rel=0.1)


def test_to_hf_carries_every_field() -> None:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=96, n_heads=3, n_kv_heads=1, rope_theta=5e5, max_seq_len=64,
                      rms_norm_eps=1e-6, tie_embeddings=False, attn_implementation="eager")
    hf = cfg.to_hf(eos_token_id=2, pad_token_id=0)
    assert (hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim) == (96, 3, 1, 32)
    assert hf.rope_parameters["rope_theta"] == 5e5
    assert (hf.max_position_embeddings, hf.rms_norm_eps, hf.tie_word_embeddings) == (64, 1e-6, False)
    assert (hf.eos_token_id, hf.pad_token_id, hf._attn_implementation) == (2, 0, "eager")


@pytest.mark.parametrize(
    "fields",
    [{"d_model": 64, "n_heads": 3}, {"n_heads": 4, "n_kv_heads": 3}, {"d_model": 66, "n_heads": 2}, {"z_loss": -1.0}],
)
def test_bad_shapes_are_rejected(fields: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**fields)


def test_loss_is_token_mean_cross_entropy_plus_z_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, VOCAB, generator=generator) * 3
    labels = torch.randint(0, VOCAB, (2, 5), generator=generator)
    labels[0, 3:] = IGNORE_INDEX
    loss, parts = causal_lm_loss(logits, labels, z_loss=0.0)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, expected)
    assert parts["tokens"].item() == 8

    lse = torch.logsumexp(logits, dim=-1)[labels != IGNORE_INDEX]
    with_z, parts = causal_lm_loss(logits, labels, z_loss=1e-2)
    torch.testing.assert_close(parts["z"], lse.square().mean())
    torch.testing.assert_close(with_z, expected + 1e-2 * lse.square().mean())


def test_loss_of_a_batch_with_nothing_to_predict_is_zero_not_nan() -> None:
    logits = torch.randn(1, 4, VOCAB, requires_grad=True)
    loss, parts = causal_lm_loss(logits, torch.full((1, 4), IGNORE_INDEX), z_loss=1e-4)
    loss.backward()
    assert loss.item() == 0.0 and parts["tokens"].item() == 0
    assert torch.count_nonzero(logits.grad) == 0


def test_flops_per_token_follows_kaplan() -> None:
    cfg = ModelConfig(vocab_size=1000, d_model=64, n_layers=2, n_heads=2, intermediate_size=192)
    non_embedding = 2 * (4 * 64 * 64 + 3 * 64 * 192 + 2 * 64) + 64
    assert count_params(cfg)["non_embedding"] == non_embedding
    assert flops_per_token(cfg, 128) == 6 * non_embedding + 6 * 2 * 128 * 64
    assert flops_per_token(cfg, 128, include_logits=True) == flops_per_token(cfg, 128) + 6 * 64 * 1000
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(cfg, 0)


def test_attention_mask_for_each_kernel() -> None:
    mask = torch.tril(torch.ones(3, 3, dtype=torch.bool))[None, None]
    assert attention_mask_for(mask, "sdpa", torch.float32) is mask
    additive = attention_mask_for(mask, "eager", torch.bfloat16)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive == 0, mask)
    assert additive[0, 0, 0, 1].item() == torch.finfo(torch.bfloat16).min
    with pytest.raises(ValueError, match="boolean"):
        attention_mask_for(mask.float(), "sdpa", torch.float32)
    with pytest.raises(ValueError, match="flash"):
        attention_mask_for(mask, "flash_attention_2", torch.float32)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_save_pretrained_reloads_with_auto_class(tmp_path, qk_norm: bool) -> None:
    cfg = ModelConfig(vocab_size=VOCAB, qk_norm=qk_norm, tie_embeddings=not qk_norm)
    model = build_model(cfg, seed=3, eos_token_id=1).eval()
    with torch.no_grad():  # perturb the norms so an ignored weight would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.linspace(-0.5, 0.5, param.numel()))
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded) is type(model)
    assert reloaded.config.eos_token_id == 1
    input_ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids).logits, model(input_ids=input_ids).logits, rtol=0, atol=0)


def test_document_block_mask_is_the_dense_mask_in_tiles() -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    # Rows of 40 tokens in tiles of 8 (the last tile padded): documents across tiles, one
    # spanning three, padding at the end of the second row.
    docs = torch.tensor([[0] * 5 + [1] * 20 + [2] * 15, [7] * 9 + [8] * 24 + [-1] * 7])
    mask = document_block_mask(docs, block_size=8)
    # Its mask_mod is causal AND same document, padding attending only to padding...
    b, q, kv = torch.meshgrid(torch.arange(2), torch.arange(40), torch.arange(40), indexing="ij")
    same_doc = (docs[:, :, None] == docs[:, None, :]) & torch.ones(40, 40, dtype=torch.bool).tril()
    assert torch.equal(mask.mask_mod(b, torch.zeros_like(b), q, kv), same_doc)
    # ...and its tiles are the ones torch derives from that mask_mod over the whole (T, T) grid:
    # a tile left out holds no allowed pair, a full one only allowed pairs.
    derived = create_block_mask(mask.mask_mod, 2, None, 40, 40, device="cpu", BLOCK_SIZE=8)
    assert torch.equal(mask.to_dense(), derived.to_dense())
    assert torch.equal(mask.full_kv_num_blocks, derived.full_kv_num_blocks)
    assert int(mask.full_kv_num_blocks.sum()) > 0 and int(mask.kv_num_blocks.sum()) < 2 * 5 * 5


def test_document_block_mask_needs_contiguous_documents() -> None:
    with pytest.raises(ValueError, match="ascend"):
        document_block_mask(torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]]), block_size=4)


def _packed_doc_ids(batch: int, seq_len: int, seed: int) -> np.ndarray:
    """(B, T) ids of rows packed with documents of 1-90 tokens, padding (-1) at some rows' ends."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(batch):
        ids = np.repeat(np.arange(seq_len), rng.integers(1, 90, seq_len))[:seq_len] + 1000 * b
        ids[seq_len - int(rng.integers(0, 20)) :] = -1
        rows.append(ids)
    return np.stack(rows)


def test_document_segments_put_every_token_back_where_it_was() -> None:
    docs = np.array([[0] * 5 + [1] * 20 + [2] * 15, [7] * 9 + [8] * 24 + [-1] * 7])
    segments = document_segments(docs, bucket_tokens=8)
    # Lengths 5, 20, 15 and 9, 24, 7 (the padding): buckets of 8, 16 and 24 tokens, two documents
    # each, every one padded with its own last position.
    assert [tuple(idx.shape) for idx in segments.gather] == [(2, 8), (2, 16), (2, 24)]
    assert segments.gather[0].tolist() == [[0, 1, 2, 3, 4, 4, 4, 4], [73, 74, 75, 76, 77, 78, 79, 79]]
    # Gathering every bucket and laying them end to end, then scattering, is the identity.
    positions = torch.arange(docs.size)
    padded = torch.cat([positions[idx].view(-1) for idx in segments.gather])
    assert torch.equal(padded[segments.scatter], positions)
    assert segments.rows_mask is None


def test_a_batch_that_costs_less_whole_goes_row_by_row_with_the_dense_mask() -> None:
    docs = np.array([[0] * 5 + [1] * 20 + [2] * 15, [7] * 9 + [8] * 24 + [-1] * 7])
    # In buckets of 32 tokens its six documents (the padding one of them) would cost 6 x 32^2 scores, more than 2 x 40^2.
    segments = document_segments(docs, bucket_tokens=32)
    dense = (docs[:, :, None] == docs[:, None, :]) & np.tril(np.ones((40, 40), dtype=bool))
    assert torch.equal(segments.rows_mask, torch.from_numpy(dense))
    assert [idx.tolist() for idx in segments.gather] == [np.arange(80).reshape(2, 40).tolist()]
    assert torch.equal(segments.scatter, torch.arange(80))


@pytest.mark.parametrize("bucket_tokens", [16, 150])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_varlen_attention_matches_the_dense_mask(qk_norm: bool, n_kv_heads: int, bucket_tokens: int) -> None:
    """The same logits and gradients as sdpa with the dense document mask, GQA included, by
    buckets of documents (16) and row by row (150: every document padded to the whole row)."""
    batch, seq_len = 3, 150
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_heads=4, n_kv_heads=n_kv_heads, qk_norm=qk_norm, max_seq_len=seq_len)
    docs = _packed_doc_ids(batch, seq_len, seed=n_kv_heads)
    input_ids = torch.randint(0, VOCAB, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    starts = np.ones_like(docs, dtype=bool)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    t = np.arange(seq_len)
    position_ids = torch.from_numpy(t - np.maximum.accumulate(np.where(starts, t, 0), axis=1))
    dense_mask = torch.from_numpy((docs[:, :, None] == docs[:, None, :]) & np.tril(np.ones((seq_len, seq_len), bool)))
    runs = {
        "sdpa": {"attention_mask": dense_mask[:, None]},
        varlen_kernel(): {"document_segments": document_segments(docs, bucket_tokens=bucket_tokens)},
    }
    logits, grads = {}, {}
    for kernel, mask_inputs in runs.items():
        model = build_model(cfg, seed=0)
        model.set_attn_implementation(kernel)
        logits[kernel] = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **mask_inputs).logits
        logits[kernel].square().mean().backward()
        grads[kernel] = {name: p.grad for name, p in model.named_parameters()}
    segments = runs[varlen_kernel()]["document_segments"]
    if bucket_tokens < seq_len:
        assert segments.rows_mask is None and len(segments.gather) > 2  # several buckets, padding within them
    else:
        assert segments.rows_mask is not None
    torch.testing.assert_close(logits[varlen_kernel()], logits["sdpa"], rtol=1e-5, atol=1e-5)
    for name, grad in grads["sdpa"].items():
        torch.testing.assert_close(grads[varlen_kernel()][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_varlen_attention_without_segments_says_what_it_needs() -> None:
    model = build_model(ModelConfig(vocab_size=VOCAB), seed=0)
    model.set_attn_implementation(varlen_kernel())
    with pytest.raises(ValueError, match="document_segments"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))
