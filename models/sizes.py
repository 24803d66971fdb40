"""The size ladder: a target non-embedding parameter count -> depth, width, heads, MLP width.

A block holds about ``12 * d_model^2`` parameters (4 d^2 in attention, 8 d^2 in a SwiGLU MLP
of width 8/3 d), so ``N ~ 12 * n_layers * d_model^2``. The rule, the same at every size:

1. depth from a fixed aspect ratio ``d_model / n_layers = aspect_ratio`` (64 by default, GPT-2
   small's; Kaplan et al. found loss flat over a wide range):
   ``n_layers = round((N / (12 * aspect_ratio^2))^(1/3))``, at least 1;
2. width: of the widths the heads allow (multiples of the head size: 16 below d_model 128,
   32 below 512, 64 below 2048, then 128), the one whose MLP comes out nearest 8/3 x d_model;
3. MLP width: solved so the count lands on the target, rounded to a multiple of 8 (64 from
   d_model 512 on).

Depth never decreases with the target, and at a fixed depth neither does width. Counts are
exact (``count_params``); a shape outside ``tolerance`` of its target is an error, not a
surprise. Targets more than ``2 * tolerance`` apart give models in the same order.
"""

from __future__ import annotations

import math
from typing import Any

from models.llama import ModelConfig, count_params

#: Named rungs: target non-embedding parameter counts.
NAMED_SIZES: dict[str, float] = {
    "10k": 1e4,
    "100k": 1e5,
    "1m": 1e6,
    "10m": 1e7,
    "100m": 1e8,
    "1b": 1e9,
}

_MLP_RATIO = 8 / 3
# (head size, widths below which it applies): heads stay few but not tiny at every width.
_HEAD_SIZES = ((16, 128), (32, 512), (64, 2048), (128, 32768))


def _widths() -> list[tuple[int, int]]:
    """Every allowed (d_model, head_dim), ascending."""
    widths, low = [], 0
    for head_dim, below in _HEAD_SIZES:
        widths += [(d, head_dim) for d in range(max(low, head_dim), below, head_dim)]
        low = below
    return widths


def size_for(
    target_non_embedding_params: float,
    vocab_size: int,
    *,
    aspect_ratio: float = 64.0,
    tolerance: float = 0.05,
    **fields: Any,
) -> ModelConfig:
    """The ladder's shape for a target non-embedding count; ``fields`` set the other
    ``ModelConfig`` fields (max_seq_len, qk_norm, tie_embeddings, ...)."""
    target = float(target_non_embedding_params)
    chosen = {"d_model", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size"}
    if clash := chosen & fields.keys():
        raise ValueError(f"size_for chooses {sorted(clash)}: leave them out or build ModelConfig directly")
    if target <= 0:
        raise ValueError(f"target_non_embedding_params must be positive, got {target}")
    n_layers = max(1, round((target / (12 * aspect_ratio**2)) ** (1 / 3)))
    best: tuple[float, ModelConfig] | None = None
    for d_model, head_dim in _widths():
        cfg = _with_mlp_for(target, vocab_size, n_layers, d_model, head_dim, fields)
        if cfg is None:
            break  # wider leaves even less room for the MLP
        cost = abs(math.log(cfg.intermediate_size / d_model / _MLP_RATIO))
        if best is None or cost < best[0]:
            best = (cost, cfg)
    if best is None or abs(count_params(best[1])["non_embedding"] / target - 1) > tolerance:
        raise ValueError(
            f"no shape within {tolerance:.0%} of {target:.3g} non-embedding parameters: "
            "the ladder spans about 1e4 to 1e11; pick a target in that range or a larger tolerance"
        )
    return best[1]


def _with_mlp_for(
    target: float, vocab_size: int, n_layers: int, d_model: int, head_dim: int, fields: dict[str, Any]
) -> ModelConfig | None:
    """The shape with the MLP width that brings the count nearest ``target``; None if none fits."""
    n_heads = d_model // head_dim
    base = ModelConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        intermediate_size=1,
        **fields,
    )
    # The count is affine in the MLP width: 3 * d_model parameters per unit per layer.
    without_mlp = count_params(base)["non_embedding"] - n_layers * 3 * d_model
    multiple = 8 if d_model < 512 else 64
    width = round((target - without_mlp) / (n_layers * 3 * d_model) / multiple) * multiple
    if width < multiple:
        return None
    return base.model_copy(update={"intermediate_size": width})


def named_size(name: str, vocab_size: int, **fields: Any) -> ModelConfig:
    """A named rung of the ladder (see ``NAMED_SIZES``)."""
    if name not in NAMED_SIZES:
        raise ValueError(f"unknown model size {name!r}: use one of {list(NAMED_SIZES)}")
    return size_for(NAMED_SIZES[name], vocab_size, **fields)
