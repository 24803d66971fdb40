"""The size ladder: within tolerance of its target, monotone, sane shapes, from 1e4 to 1e9."""

from __future__ import annotations

import numpy as np
import pytest

from models.llama import build_model, count_params
from models.sizes import NAMED_SIZES, named_size, size_for

# Steps of 10**0.125 (33%) are wider than twice the 5% tolerance, so order must hold.
TARGETS = np.logspace(4, 9, 41)


def test_counts_land_near_targets_and_grow_with_them() -> None:
    shapes = [size_for(t, vocab_size=32000) for t in TARGETS]
    counts = [count_params(cfg)["non_embedding"] for cfg in shapes]
    for target, count in zip(TARGETS, counts, strict=True):
        assert abs(count / target - 1) <= 0.05, (target, count)
    assert all(a < b for a, b in zip(counts, counts[1:]))
    depths = [cfg.n_layers for cfg in shapes]
    assert depths == sorted(depths)
    assert depths[0] == 1 and depths[-1] > 16


def test_shapes_are_sane() -> None:
    for target in TARGETS:
        cfg = size_for(target, vocab_size=32000)
        assert cfg.head_dim in (16, 32, 64, 128)
        assert cfg.n_kv_heads == cfg.n_heads
        assert 1.5 <= cfg.intermediate_size / cfg.d_model <= 4.5, (target, cfg)
        assert cfg.intermediate_size % 8 == 0


def test_other_fields_pass_through_and_shape_fields_are_refused() -> None:
    cfg = size_for(1e6, vocab_size=500, qk_norm=True, max_seq_len=64, tie_embeddings=False)
    assert (cfg.qk_norm, cfg.max_seq_len, cfg.tie_embeddings, cfg.vocab_size) == (True, 64, False, 500)
    assert sum(p.numel() for p in build_model(cfg).parameters()) == count_params(cfg)["total"]
    with pytest.raises(ValueError, match="d_model"):
        size_for(1e6, vocab_size=500, d_model=128)


def test_targets_outside_the_ladder_are_errors() -> None:
    with pytest.raises(ValueError, match="no shape within"):
        size_for(2e3, vocab_size=100)
    with pytest.raises(ValueError, match="positive"):
        size_for(0, vocab_size=100)


def test_named_sizes() -> None:
    for name, target in NAMED_SIZES.items():
        assert named_size(name, vocab_size=100) == size_for(target, vocab_size=100)
    with pytest.raises(ValueError, match="unknown model size"):
        named_size("huge", vocab_size=100)
