"""The model a run starts from: fresh from the config, or a pretrained HF checkpoint (continued pretraining).

Continued pretraining may add tokens to the vocabulary. Their embedding rows (and output
rows, when untied) start as the mean of the existing rows: a new token then starts as an
"average" token instead of noise, which keeps the first steps' loss and gradients near the
pretrained model's (Hewitt, 2021, "Initializing new word embeddings").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models.llama import ModelConfig, build_model
from models.sizes import size_for
from tasks.train.config import TrainConfig
from tasks.train.shards import PackedShards

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# ModelConfig fields that size_for chooses from the parameter target.
_SIZED = {"d_model", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size"}


def resolve_model_config(cfg: TrainConfig, shards: PackedShards) -> ModelConfig:
    """``cfg.model`` with the shards' vocabulary (and the size ladder's shape if ``target_params``)."""
    vocab_size = shards.index["vocab_size"]
    model = cfg.model
    if "vocab_size" in model.model_fields_set and model.vocab_size != vocab_size:
        raise ValueError(
            f"train.model.vocab_size={model.vocab_size} but the shards at {shards.directory} were made with a "
            f"{vocab_size}-token tokenizer: leave vocab_size unset to take the tokenizer's"
        )
    if cfg.target_params is not None:
        kept = {k: v for k, v in model.model_dump().items() if k not in _SIZED}
        model = size_for(cfg.target_params, vocab_size, **kept)
    else:
        model = model.model_copy(update={"vocab_size": vocab_size})
    if model.max_seq_len < shards.seq_len:
        raise ValueError(
            f"train.model.max_seq_len={model.max_seq_len} is shorter than the shards' seq_len={shards.seq_len}: raise it"
        )
    return model


def resolve(cfg: TrainConfig, shards: PackedShards) -> TrainConfig:
    """``cfg`` with ``model`` as it will be built, so the config that is logged, hashed and
    handed to the training processes names the real shape (a pretrained start keeps its own)."""
    if cfg.init.from_dir:
        return cfg
    return cfg.model_copy(update={"model": resolve_model_config(cfg, shards)})


def model_config_from_hf(config: Any, like: ModelConfig) -> ModelConfig:
    """The ``ModelConfig`` of a pretrained HF Llama/Qwen3 config (z_loss and kernel from ``like``)."""
    if config.model_type not in {"llama", "qwen3"}:
        raise ValueError(f"continued pretraining supports llama and qwen3 checkpoints, got {config.model_type!r}")
    return ModelConfig(
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        rope_theta=config.rope_parameters["rope_theta"],
        rms_norm_eps=config.rms_norm_eps,
        tie_embeddings=config.tie_word_embeddings,
        qk_norm=config.model_type == "qwen3",
        z_loss=like.z_loss,
        init_std=config.initializer_range,
        attn_implementation=like.attn_implementation,
    )


def extend_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, new_tokens: list[str]) -> list[int]:
    """Add ``new_tokens`` to ``tokenizer`` and give each a mean-initialised row; returns their ids."""
    known = sorted(set(new_tokens) & tokenizer.get_vocab().keys())
    if known or len(set(new_tokens)) != len(new_tokens):
        raise ValueError(f"init.new_tokens repeats tokens or has some already in the vocabulary ({known}): remove them")
    tokenizer.add_tokens(new_tokens)
    ids = tokenizer.convert_tokens_to_ids(new_tokens)
    old_rows = model.get_input_embeddings().weight.shape[0]
    new_rows = max(old_rows, max(ids) + 1)
    input_mean = model.get_input_embeddings().weight[:old_rows].detach().mean(0)
    output = model.get_output_embeddings()
    output_mean = output.weight[:old_rows].detach().mean(0) if output is not None else None
    model.resize_token_embeddings(new_rows, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = input_mean
        if output_mean is not None and not model.config.tie_word_embeddings:
            model.get_output_embeddings().weight[ids] = output_mean
    return ids


def initial_model(
    cfg: TrainConfig, shards: PackedShards, tokenizer_dir: Path | None
) -> tuple[PreTrainedModel, ModelConfig, PreTrainedTokenizerBase | None]:
    """The model to train, its ModelConfig, and the tokenizer to save with it (None if unknown).

    From scratch: ``build_model`` with the shards' vocabulary and special-token ids. From
    ``init.from_dir``: the pretrained weights, with ``init.new_tokens`` added.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None
    if not cfg.init.from_dir:
        model_cfg = resolve_model_config(cfg, shards)
        boundary, pad = shards.index["boundary_id"], shards.index["pad_id"]
        model = build_model(model_cfg, seed=cfg.seed, bos_token_id=boundary, eos_token_id=boundary, pad_token_id=pad)
        return model, model_cfg, tokenizer
    source = Path(cfg.init.from_dir)
    if not (source / "config.json").exists():
        raise ValueError(f"init.from_dir={source} has no config.json: point it at a directory written by save_pretrained")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation=cfg.model.attn_implementation)
    if tokenizer is None and (source / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(source)
    if cfg.init.new_tokens:
        if tokenizer is None:
            raise ValueError(f"init.new_tokens needs a tokenizer, and {source} has none: pass the tokenizer directory")
        extend_vocab(model, tokenizer, cfg.init.new_tokens)
    model_cfg = model_config_from_hf(model.config, cfg.model)
    if shards.index["vocab_size"] > model_cfg.vocab_size:
        raise ValueError(
            f"the shards at {shards.directory} use {shards.index['vocab_size']} token ids but the model at {source} "
            f"has {model_cfg.vocab_size} rows: pack the data with the model's tokenizer (plus init.new_tokens)"
        )
    return model, model_cfg, tokenizer
