"""Decoder-only transformer as a Hugging Face Llama: pre-norm RMSNorm, RoPE, SwiGLU.

The model is a stock ``transformers`` class, so a checkpoint written with ``save_pretrained``
loads in TRL, lm-eval and ``mlflow.transformers`` through ``AutoModelForCausalLM`` with no
custom code. Two stability options from OLMo 2 are covered:

- **QK-norm** (RMSNorm on queries and keys before RoPE). ``LlamaForCausalLM`` has none, so
  with ``qk_norm=True`` the model is a ``Qwen3ForCausalLM``: Qwen3's decoder layer is Llama's
  (pre-norm, RoPE, SwiGLU, GQA) plus a per-head RMSNorm on q and k. Olmo2 was not chosen
  because it also moves the block norms after attention and MLP (post-norm), which would
  change two things at once.
- **z-loss** is a loss term, not a module: ``causal_lm_loss`` adds
  ``z_loss * mean(logsumexp(logits)^2)`` (PaLM; OLMo 2 uses 1e-5).

Parameter and FLOP counts are analytic (``count_params``, ``flops_per_token``) so the scaling
ladder can size a model without building it; a test holds them equal to the built model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from ladder.config import Section

if TYPE_CHECKING:
    import torch
    from torch.nn.attention.flex_attention import BlockMask
    from transformers import PretrainedConfig, PreTrainedModel

IGNORE_INDEX = -100

# transformers' from_pretrained swaps class attributes (PreTrainedModel.tie_weights, init_weights)
# in and out without a lock: two loads at once in one process (the scaling stage logs its rungs
# from threads and scores finished rungs beside them) can leave weight tying off for the rest of
# the process, so later models get an untied lm_head. Hold this around every load.
LOADING = threading.Lock()


class ModelConfig(Section):
    """Shape and options of the decoder; defaults are the ``tiny`` CPU profile."""

    vocab_size: int = Field(4096, gt=0, description="Vocabulary size; must match the tokenizer's.")
    d_model: int = Field(64, gt=0, description="Width of the residual stream (HF hidden_size).")
    n_layers: int = Field(2, gt=0, description="Number of decoder blocks.")
    n_heads: int = Field(2, gt=0, description="Query heads; head_dim = d_model / n_heads.")
    n_kv_heads: int = Field(2, gt=0, description="Key/value heads (grouped-query attention when < n_heads).")
    intermediate_size: int = Field(192, gt=0, description="Hidden width of the SwiGLU MLP.")
    max_seq_len: int = Field(256, gt=0, description="Longest sequence RoPE is set up for.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    rms_norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every RMSNorm.")
    tie_embeddings: bool = Field(True, description="Share the input embedding with the output projection.")
    qk_norm: bool = Field(False, description="RMSNorm on queries and keys per head (builds a Qwen3ForCausalLM).")
    z_loss: float = Field(0.0, ge=0, description="Coefficient of the z-loss term mean(logsumexp^2); 0 turns it off.")
    init_std: float = Field(0.02, gt=0, description="Std of the normal init of linear and embedding weights.")
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel; both honour the 4D document mask (see attention_mask_for)."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim={self.d_model // self.n_heads} must be even for RoPE; change d_model or n_heads")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_hf(
        self,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> PretrainedConfig:
        """The Hugging Face config: a ``LlamaConfig``, or a ``Qwen3Config`` when ``qk_norm``."""
        from transformers import LlamaConfig, Qwen3Config

        common = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_seq_len,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_embeddings,
            initializer_range=self.init_std,
            attention_bias=False,
            attention_dropout=0.0,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            attn_implementation=self.attn_implementation,
        )
        if self.qk_norm:
            return Qwen3Config(**common, use_sliding_window=False)
        return LlamaConfig(**common, mlp_bias=False)


def build_model(cfg: ModelConfig, *, seed: int = 0, **special_token_ids: int | None) -> PreTrainedModel:
    """A freshly initialised fp32 model; the same ``cfg`` and ``seed`` give the same weights.

    ``special_token_ids`` (bos_token_id, eos_token_id, pad_token_id) go into the saved config
    so that generation and evaluation tools find them.
    """
    import torch
    from transformers import LlamaForCausalLM, Qwen3ForCausalLM

    model_cls = Qwen3ForCausalLM if cfg.qk_norm else LlamaForCausalLM
    # fork_rng keeps the caller's RNG stream untouched by model construction.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(cfg.to_hf(**special_token_ids))


def attention_mask_for(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean (B, 1, T, T) mask (True = may attend) in the form ``attn_implementation`` honours.

    transformers passes a 4D mask to the kernel unchanged. sdpa takes it as boolean; eager
    *adds* it to the scores, so it needs 0 / dtype-min (a boolean there would add 0 or 1
    and leak across documents).
    """
    import torch

    if mask.dim() != 4 or mask.dtype != torch.bool:
        raise ValueError(f"expected a boolean (B, 1, T, T) mask, got {mask.dtype} of shape {tuple(mask.shape)}")
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill_(~mask, torch.finfo(dtype).min)
    raise ValueError(f"attn_implementation {attn_implementation!r} is not supported: use 'sdpa' or 'eager'")


#: Tile of the block-sparse document mask (FlexAttention's default): queries and keys in
#: 128-token blocks, so a document of a few hundred tokens touches a few tiles per row.
ATTENTION_BLOCK = 128
#: transformers' attention implementations that take a ``BlockMask`` (``document_block_mask``).
BLOCK_MASK_KERNELS = ("flex_attention",)


def document_block_mask(doc_ids: torch.Tensor, block_size: int = ATTENTION_BLOCK) -> BlockMask:
    """Causal AND same-document attention over packed rows, as a block-sparse FlexAttention mask.

    ``doc_ids`` (B, T): each token's document, -1 for padding; documents are contiguous runs
    (packing writes them so) and padding comes last. Of the ceil(T / block_size)^2 tiles of a row, a
    tile is left out when none of its queries shares a document with an earlier key, *full*
    when query and key tiles lie in one document with the key tile strictly earlier (no mask is
    evaluated there), and *partial* otherwise (``mask_mod`` decides per token). Built from each
    tile's first and last document, O(B (T / block_size)^2): the (T, T) mask is never formed.
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    batch, seq_len = doc_ids.shape
    # Padding attends only to padding, as in the dense mask; ids above every document keep ids
    # ascending. The last tile's positions past T (kernels pad to whole tiles) are one more
    # document, so mask_mod can index them and they reach nothing real.
    past_end = torch.iinfo(torch.long).max
    docs = doc_ids.long().masked_fill(doc_ids < 0, past_end - 1)
    docs = torch.cat([docs, docs.new_full((batch, -seq_len % block_size), past_end)], 1)  # (B, n * block_size)
    if bool((docs[:, 1:] < docs[:, :-1]).any()):
        raise ValueError("document ids must ascend along each row (contiguous documents, padding last)")
    tiles = docs.view(batch, -1, block_size)
    first, last = tiles[..., 0], tiles[..., -1]  # (B, n): ascending ids bound each tile's documents
    n = tiles.shape[1]
    q_tile = torch.arange(n, device=docs.device)[:, None]  # (n, 1)
    kv_tile = torch.arange(n, device=docs.device)[None, :]  # (1, n)
    # An earlier key tile's documents all end at or before the query tile's first one: they meet iff equal.
    visited = (kv_tile <= q_tile) & (last[:, None, :] >= first[:, :, None])  # (B, n_q, n_kv)
    one_doc = first == last  # (B, n)
    full = (kv_tile < q_tile) & one_doc[:, :, None] & one_doc[:, None, :] & (first[:, :, None] == first[:, None, :])

    def ordered(tile_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(count, indices) per query tile, the visited key tiles first, with a head dim of 1."""
        counts = tile_mask.sum(-1, dtype=torch.int32)  # (B, n)
        indices = torch.sort((~tile_mask).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)  # (B, n, n)
        return counts[:, None], indices[:, None]

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx])

    return BlockMask.from_kv_blocks(
        *ordered(visited & ~full), *ordered(full), BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(seq_len, seq_len)
    )


#: transformers' attention implementation (registered by ``varlen_kernel``) that runs each document on its own
#: and takes ``document_segments`` (a ``DocumentSegments``) instead of a mask.
VARLEN_KERNEL = "ladder_varlen"
#: Bucket granularity of ``document_segments``: documents are padded to a multiple of this many tokens. At
#: bench/train.py's larger shape (4 x 512 tokens, 8 heads of 64, documents of 20-300 tokens) attention forward +
#: backward took 29 ms with 64 against 46 ms with powers of two (a 257-token document padded to 512) and 40 ms with
#: 16 (more, smaller calls), one CPU thread.
BUCKET_TOKENS = 64


@dataclass(frozen=True)
class DocumentSegments:
    """Where the spans attention runs over lie in a packed (B, T) batch, grouped into buckets of one padded length.

    A span is one document, attended causally, or, when ``rows_mask`` (B, T, T) is set, each
    whole row, attended with it (True: the key is this query's or before it, in its document; see
    ``document_segments``). ``gather[i]`` (n_i, L_i): the flat positions (``b * T + t``) of
    bucket i's spans, one per row, right-padded to L_i by repeating the span's last position.
    Per token (B * T,): ``scatter``, its place among all buckets' padded positions laid end to
    end; ``within``, its index in its span; ``span``, its bucket's L_i.
    """

    gather: tuple[torch.Tensor, ...]
    rows_mask: torch.Tensor | None
    scatter: torch.Tensor
    within: torch.Tensor
    span: torch.Tensor
    seq_len: int

    def to(self, device: torch.device | str | None) -> DocumentSegments:
        """The same segments on ``device``."""
        return DocumentSegments(
            tuple(idx.to(device, non_blocking=True) for idx in self.gather),
            None if self.rows_mask is None else self.rows_mask.to(device, non_blocking=True),
            self.scatter.to(device, non_blocking=True), self.within.to(device, non_blocking=True),
            self.span.to(device, non_blocking=True), self.seq_len,
        )

    def gather_rows(self, heads: int) -> torch.Tensor:
        """Rows of a (B, heads, T, D) tensor seen as (B * heads * T, D): bucket after bucket, each (span, head, position).

        Gathered so, each bucket is a contiguous (n_i, heads, L_i, D) block: the attention
        products read it as it lies, with no transposed copies.
        """
        import torch

        rows = []
        for idx in self.gather:
            row, t = idx // self.seq_len, idx % self.seq_len  # (n, L)
            head = torch.arange(heads, device=idx.device)[None, :, None]
            rows.append(((row[:, None, :] * heads + head) * self.seq_len + t[:, None, :]).view(-1))  # (n * heads * L,)
        return torch.cat(rows)

    def scatter_rows(self, heads: int) -> torch.Tensor:
        """For each (token, head) in (B, T, heads) order, its row among the gathered buckets' outputs, each (span, head, position)."""
        import torch

        span_start = heads * (self.scatter - self.within)  # (B * T,): where the token's span starts, heads included
        head = torch.arange(heads, device=self.scatter.device)[None, :]
        return (span_start + self.within)[:, None] + head * self.span[:, None]  # (B * T, heads)


def document_segments(doc_ids: np.ndarray, bucket_tokens: int = BUCKET_TOKENS) -> DocumentSegments:
    """The ``DocumentSegments`` of packed rows ``doc_ids`` (B, T): each token's document, -1 for padding.

    A document is a run of equal ids in a row; the padding at a row's end is one more, so that
    it attends only to padding, as in the dense mask. Documents are bucketed by length rounded
    up to a multiple of ``bucket_tokens`` (at most T): a batch makes at most T / bucket_tokens
    attention calls, not one per document, and pads no document by more than bucket_tokens - 1.
    A batch whose padded documents would cost more than the B * T^2 scores of its whole rows
    (short rows: at T = 128 and 64-token buckets, nearly every batch) is instead one bucket of
    its rows with their masks: fewer scores, and nothing gathered or scattered.
    """
    import torch

    batch, seq_len = doc_ids.shape
    positions = np.arange(batch * seq_len)
    starts = np.ones((batch, seq_len), dtype=bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = np.flatnonzero(starts)  # flat start of every document, in row order
    lengths = np.diff(np.append(first, batch * seq_len))
    buckets = np.minimum(-(-lengths // bucket_tokens) * bucket_tokens, seq_len)
    if (buckets.astype(np.float64) ** 2).sum() > batch * seq_len**2:
        allowed = (doc_ids[:, :, None] == doc_ids[:, None, :]) & np.tri(seq_len, dtype=bool)  # (B, T, T)
        return DocumentSegments(
            (torch.from_numpy(positions.reshape(batch, seq_len)),), torch.from_numpy(allowed),
            torch.from_numpy(positions), torch.from_numpy(positions % seq_len), torch.full((batch * seq_len,), seq_len), seq_len,
        )
    gather = []
    scatter, within, span = (np.empty(batch * seq_len, dtype=np.int64) for _ in range(3))
    offset = 0
    for size in np.unique(buckets):
        docs = np.flatnonzero(buckets == size)
        step = np.arange(size)
        gather.append(torch.from_numpy(first[docs, None] + np.minimum(step, lengths[docs, None] - 1)))  # (n, L)
        real = step < lengths[docs, None]  # (n, L)
        placed = (first[docs, None] + step)[real]
        scatter[placed] = offset + np.flatnonzero(real)
        within[placed] = np.broadcast_to(step, real.shape)[real]
        span[placed] = size
        offset += docs.size * size
    return DocumentSegments(
        tuple(gather), None, torch.from_numpy(scatter), torch.from_numpy(within), torch.from_numpy(span),
        seq_len,
    )


def causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal softmax attention, query (N, H, L, D), key and value (N, H_kv, L, D) -> (N, H, L, D).

    ``allowed`` (N, L, L) bool, when given, is the mask itself (True = may attend; causal and
    more), else plain causal. On a GPU, sdpa's fused kernel. On CPU, the product written out:
    the bias added and the scale applied by the score matmul itself (baddbmm) and the softmax in
    the scores' dtype (the CPU kernel accumulates bf16 in fp32). At L <= 512, D = 64 its
    forward + backward took a quarter to a half of the time of sdpa's CPU flash kernel, whose
    backward is slow, and half of HF eager's form (a separate mask op and fp32 copies of the
    scores) (torch 2.13, one thread). Grouped-query heads share their key-value head through a
    reshape, not a copy: head h reads key head h // (H / H_kv), as transformers' ``repeat_kv``
    lays them out.
    """
    import torch

    if query.device.type != "cpu":
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=None if allowed is None else allowed[:, None], is_causal=allowed is None,
            scale=scale, enable_gqa=key.shape[1] != query.shape[1],
        )
    spans, heads, size, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    if allowed is None:
        # (group * L, L), the same for every span and head: the batched matmul broadcasts it.
        bias = torch.full((size, size), float("-inf"), dtype=query.dtype, device=query.device).triu(1).repeat(group, 1)
    else:
        bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(~allowed, float("-inf"))
        bias = bias[:, None, None].expand(spans, kv_heads, group, size, size).reshape(spans * kv_heads, group * size, size)
    grouped = query.reshape(spans * kv_heads, group * size, head_dim)  # a group's queries, one after another
    keys = key.reshape(spans * kv_heads, size, head_dim).transpose(1, 2)
    scores = torch.baddbmm(bias, grouped, keys, alpha=scale)
    out = scores.softmax(-1) @ value.reshape(spans * kv_heads, size, head_dim)  # (N * H_kv, group * L, D)
    return out.view(spans, heads, size, head_dim)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    dropout: float = 0.0,
    document_segments: DocumentSegments | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention within each document, called as transformers calls its attention functions.

    query (B, H, T, D), key and value (B, H_kv, T, D); returns (B, T, H, D). Each bucket of
    documents is one ``causal_attention`` call with no mask, so the work grows with the
    documents' lengths squared, not T^2, and no (B, 1, T, T) mask is made. Right padding needs
    no mask: a causal query never sees the keys after it. A batch that costs less as whole rows
    (see ``document_segments``) is one call over them, with their masks.
    """
    import torch

    if document_segments is None:
        raise ValueError(f"attention {VARLEN_KERNEL!r} needs document_segments=document_segments(doc_ids) in the forward")
    if dropout:
        raise ValueError(f"attention {VARLEN_KERNEL!r} has no attention dropout: set the model's attention_dropout to 0")
    batch, heads, seq_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if torch.is_autocast_enabled(query.device.type):
        # RoPE leaves q and k in fp32 (its cos and sin are) and the products would cast them: cast first, gather half the bytes.
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = (x.to(dtype) for x in (query, key, value))
    segments = document_segments
    if segments.rows_mask is not None:  # the batch as it lies: nothing to gather
        return causal_attention(query, key, value, scaling, segments.rows_mask).transpose(1, 2), None
    q_rows = segments.gather_rows(heads)
    kv_rows = q_rows if kv_heads == heads else segments.gather_rows(kv_heads)
    # One index_select per tensor, not x[rows] (whose backward, on CPU, is several times slower than index_add) nor one
    # per bucket; split, not slicing: the backward of each would fill a zero tensor of the whole.
    q = query.reshape(-1, head_dim).index_select(0, q_rows)
    k, v = (x.reshape(-1, head_dim).index_select(0, kv_rows) for x in (key, value))
    shapes = [idx.shape for idx in segments.gather]
    q_parts = q.split([n * heads * size for n, size in shapes])
    k_parts, v_parts = (x.split([n * kv_heads * size for n, size in shapes]) for x in (k, v))
    outputs = []
    for (n, size), q_b, k_b, v_b in zip(shapes, q_parts, k_parts, v_parts, strict=True):
        kv_shape = (n, kv_heads, size, head_dim)
        out = causal_attention(q_b.view(n, heads, size, head_dim), k_b.view(kv_shape), v_b.view(kv_shape), scaling)
        outputs.append(out.view(-1, head_dim))  # (n * H * L, D)
    out = torch.cat(outputs).index_select(0, segments.scatter_rows(heads).view(-1))  # (B * T * H, D)
    return out.view(batch, seq_len, heads, head_dim), None


def varlen_kernel() -> str:
    """Register ``varlen_attention_forward`` with transformers (again is harmless) and return its name.

    Under ``torch.compile`` it runs eagerly, between compiled graphs of the rest of each layer:
    its bucket shapes change with every batch, and compiled they would recompile every step.
    """
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_KERNEL, torch.compiler.disable(varlen_attention_forward))
    return VARLEN_KERNEL


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, z_loss: float, rows: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean cross entropy plus ``z_loss * mean(logsumexp^2)`` over predicted tokens.

    ``labels`` (B, T) are already aligned with ``logits`` (B, T, V): ``labels[:, t]`` is the
    target of position t (the loader shifts them), unlike HF's ``labels=`` argument, which
    shifts again. Positions labelled ``IGNORE_INDEX`` count in neither term. Computed in fp32.
    Returns the loss and its detached parts: ``ce``, ``z`` and ``tokens`` (how many targets), and
    with ``rows`` per sequence ``row_ce`` (summed cross-entropy) and ``row_tokens``, from which
    validation measures its own noise (the training step does not ask for them).
    """
    import torch

    logits = logits.float()
    valid = labels != IGNORE_INDEX  # (B, T)
    lse = torch.logsumexp(logits, dim=-1)  # (B, T)
    target_logit = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    # Clamp, not an if: a host sync per step costs more than the rare all-ignored batch.
    tokens = valid.sum().clamp(min=1)
    token_ce = (lse - target_logit) * valid
    ce = token_ce.sum() / tokens
    z = (lse.square() * valid).sum() / tokens
    loss = ce + z_loss * z if z_loss else ce
    parts = {"ce": ce.detach(), "z": z.detach(), "tokens": valid.sum().detach()}
    if rows:
        parts.update(row_ce=token_ce.detach().sum(-1), row_tokens=valid.sum(-1))
    return loss, parts


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts: ``embedding`` (input table, plus the output projection when
    untied), ``non_embedding`` (blocks and final norm: Kaplan's N) and ``total``."""
    d, hd = cfg.d_model, cfg.head_dim
    attention = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, o + k, v
    mlp = 3 * d * cfg.intermediate_size  # gate, up, down
    norms = 2 * d + (2 * hd if cfg.qk_norm else 0)
    non_embedding = cfg.n_layers * (attention + mlp + norms) + d  # + final norm
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return {"embedding": embedding, "non_embedding": non_embedding, "total": embedding + non_embedding}


def flops_per_token(cfg: ModelConfig, seq_len: int, *, include_logits: bool = False) -> float:
    """Training FLOPs per token: ``6 * N + 6 * n_layers * seq_len * d_model`` (Kaplan et al. 2020).

    N is the non-embedding count; 6 = 2 (multiply-add) x 3 (forward + backward). The attention
    term is the QK^T and AV products with the causal mask's half discounted (PaLM's
    ``12 * L * T * d`` without the discount). ``include_logits`` adds the output projection,
    ``6 * d_model * vocab_size``, which Kaplan leaves out but a small model spends much of its
    compute on; use it for MFU.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    flops = 6.0 * count_params(cfg)["non_embedding"] + 6.0 * cfg.n_layers * seq_len * cfg.d_model
    if include_logits:
        flops += 6.0 * cfg.d_model * cfg.vocab_size
    return flops
