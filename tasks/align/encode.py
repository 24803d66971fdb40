"""Instruction items as training rows: response-only labels, packing, and a collator that keeps packed items apart.

An instruction item is encoded as its prompt rendered by the tokenizer's chat template with the
generation prompt (exactly what the model is given at inference) followed by the response's
tokens and eos. Only the response and eos carry labels: prompt tokens are ``IGNORE_INDEX``. Replay text (pretraining data mixed in) is labelled throughout.

Packing puts several items in one row (best-fit decreasing, deterministic). A row's items
must not see each other: restarted ``position_ids`` alone do not isolate them in
transformers' sdpa or eager attention (FIELD-NOTES), and TRL's padding-free packing relies on
FlashAttention's varlen kernels (GPU only), so the collator builds an explicit (B, 1, T, T)
mask, causal and same-item, in the form the attention kernel honours
(``models.llama.attention_mask_for``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from models.llama import IGNORE_INDEX, attention_mask_for

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOO_LONG = "too_long"


@dataclass(frozen=True)
class Encoded:
    """One item's tokens and labels (``IGNORE_INDEX`` on the prompt)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding token's id; eos when the tokenizer has none (padding is masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's tokens: its turns in the chat template, then the opening of the assistant's turn."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """The response's tokens and eos, which ends the assistant's turn in the chat template."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: save it with the boundary token as eos (tasks.tokenizer.hf)")
    return [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], response: str) -> Encoded:
    """Prompt and response tokens; labels only on the response. Prompt and response are tokenized apart, so
    no token spans the boundary and the prompt's tokens are those the model sees at inference."""
    prompt, answer = prompt_ids(tokenizer, messages), response_ids(tokenizer, response)
    return Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> Encoded:
    """Plain text as pretraining saw it: its tokens and eos (the document boundary), every one labelled; cut to ``max_length``."""
    ids = response_ids(tokenizer, text)[:max_length]
    return Encoded(ids, list(ids))


def pack(encoded: list[Encoded], max_length: int, packing: bool) -> tuple[list[dict[str, Any]], Counter]:
    """Rows of ``input_ids``, ``labels`` and ``seq_lengths`` (the items' lengths, in order).

    With ``packing``, items go into rows of up to ``max_length`` tokens by best-fit
    decreasing (the longest first, each into the fullest row it fits); without, one item per
    row. An item longer than ``max_length`` is dropped and counted, never cut: cutting would
    train on a response without its end, or on none of it.
    """
    drops: Counter = Counter()
    fitting = []
    for index, item in enumerate(encoded):
        if len(item) > max_length:
            drops[TOO_LONG] += 1
        else:
            fitting.append(index)
    rows: list[list[int]] = []
    room: list[int] = []
    order = sorted(fitting, key=lambda i: (-len(encoded[i]), i)) if packing else fitting
    for index in order:
        size = len(encoded[index])
        fits = [r for r in range(len(rows)) if room[r] >= size] if packing else []
        if fits:
            best = min(fits, key=lambda r: (room[r], r))
            rows[best].append(index)
            room[best] -= size
        else:
            rows.append([index])
            room.append(max_length - size)
    out = []
    for members in rows:
        out.append({
            "input_ids": [t for i in members for t in encoded[i].input_ids],
            "labels": [t for i in members for t in encoded[i].labels],
            "seq_lengths": [len(encoded[i]) for i in members],
        })
    return out, drops


@dataclass
class PackedCollator:
    """Batches packed rows: pads them, restarts positions per item, masks attention to the item itself.

    Returns ``input_ids``, ``labels`` (``IGNORE_INDEX`` on padding and on each item's first
    token, so no item is trained to follow the one before it), ``position_ids`` and a 4D
    ``attention_mask``. Padding positions attend only to themselves: a query with no key to
    attend to would make sdpa return NaN.
    """

    pad_token_id: int
    attn_implementation: str = "sdpa"
    dtype: torch.dtype = torch.float32

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch, length = len(rows), max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((batch, length), dtype=torch.long)
        # Item index of every position; padding gets a distinct negative id per position.
        owner = -torch.arange(1, length + 1).repeat(batch, 1)  # (B, T)
        for b, row in enumerate(rows):
            size = len(row["input_ids"])
            input_ids[b, :size] = torch.tensor(row["input_ids"])
            labels[b, :size] = torch.tensor(row["labels"])
            start = 0
            for item, item_length in enumerate(row["seq_lengths"]):
                position_ids[b, start : start + item_length] = torch.arange(item_length)
                owner[b, start : start + item_length] = item
                labels[b, start] = IGNORE_INDEX
                start += item_length
            if start != size:
                raise ValueError(f"row {b}: seq_lengths sum to {start} but the row has {size} tokens")
        causal = torch.ones(length, length, dtype=torch.bool).tril()  # (T, T)
        same_item = owner[:, :, None] == owner[:, None, :]  # (B, T, T)
        mask = (same_item & causal)[:, None]  # (B, 1, T, T)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": attention_mask_for(mask, self.attn_implementation, self.dtype),
        }
