"""A model's answers to chat prompts (greedy or sampled, seeded) and the log-probability of given answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from models.llama import IGNORE_INDEX
from tasks.align.encode import PackedCollator, encode, pack, pad_id, prompt_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int,
    num_samples: int = 1,
    temperature: float | None = None,
    seed: int = 0,
) -> list[list[str]]:
    """``num_samples`` responses per prompt: greedy when ``temperature`` is None, else sampled at it.

    Sampling draws from the full distribution (no top-k or top-p), seeded per batch, so the
    same model, prompts and seed give the same samples. A response is the text before eos.
    """
    if temperature is None and num_samples != 1:
        raise ValueError("greedy decoding gives one response per prompt: pass a temperature to sample several")
    model.eval()
    padding = pad_id(tokenizer)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {"do_sample": False}
    answers: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [prompt_ids(tokenizer, messages) for messages in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        # Left padding: every prompt ends where generation starts.
        input_ids = torch.tensor([[padding] * (width - len(ids)) + ids for ids in encoded])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + start)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=padding,
                **sampling,
            )
        texts = []
        for row in output[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        answers += [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
    return answers


@torch.no_grad()
def response_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]]],
    responses: list[str],
    batch_size: int,
) -> torch.Tensor:
    """log p(response + eos | prompt) per pair, summed over the response's tokens, (N,) float64.

    The sequence log-probability of DPO's implicit reward, on the tokens SFT trained on.
    """
    model.eval()
    encoded = [encode(tokenizer, messages, response) for messages, response in zip(prompts, responses, strict=True)]
    collate = PackedCollator(pad_id(tokenizer), model.config._attn_implementation)
    totals = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        rows, _ = pack(chunk, max(len(e) for e in chunk), packing=False)
        batch = collate(rows)
        labels = batch.pop("labels")[:, 1:]  # (B, T-1): the target of each position
        logits = model(**batch).logits[:, :-1].float()  # (B, T-1, V)
        logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        totals.append((logps * (labels != IGNORE_INDEX)).sum(-1).double())
    return torch.cat(totals)
