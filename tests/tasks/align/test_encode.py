"""Response-only labels, best-fit packing, and packed items that cannot see each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.llama import IGNORE_INDEX
from tasks.align.config import SFTSettings
from tasks.align.encode import TOO_LONG, Encoded, PackedCollator, encode, encode_text, pack, prompt_ids
from tasks.align.sft import sft_trainer

CONVERSATIONS = [
    ([{"role": "user", "content": "Who wrote this passage: milton or shakespeare?\n\nThe ghost of denmark"}], "shakespeare"),
    ([{"role": "user", "content": "Continue the passage.\n\nSerpent eden apple"}], "Garden eve adam throne"),
    ([{"role": "system", "content": "Answer with the letter."},
      {"role": "user", "content": "Which comes next?\nA. storm\nB. ship"}], "B"),
    ([{"role": "user", "content": "Fill in ___:\nWitch dagger\n___\nRaven spot"}], "Blood crown thane"),
    ([{"role": "user", "content": "Name the work.\n\nShepherd laurel myrtle"}], "Lycidas"),
]


def test_encoding_is_the_chat_template_of_the_whole_conversation(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for messages, response in CONVERSATIONS:
        whole = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=True, return_dict=False
        )
        assert encode(tokenizer, messages, response).input_ids == list(whole)


def test_prompt_tokens_carry_no_loss_in_the_batches_sft_trainer_trains_on(model_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = [encode(tokenizer, messages, response) for messages, response in CONVERSATIONS]
    cfg = SFTSettings(max_length=96, batch_size=len(encoded))
    rows, drops = pack(encoded, cfg.max_length, packing=True)
    assert not drops and len(rows) < len(encoded)  # some rows hold several items

    trainer = sft_trainer(model, tokenizer, rows, cfg, tmp_path / "trainer")
    batch = next(iter(trainer.get_train_dataloader()))

    expected = {tuple(e.input_ids): (len(prompt_ids(tokenizer, m)), r) for e, (m, r) in zip(encoded, CONVERSATIONS, strict=True)}
    found = []
    for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"], strict=True):
        real = ids != tokenizer.pad_token_id
        assert (labels[~real] == IGNORE_INDEX).all()
        starts = [int(i) for i in torch.nonzero(real & (positions == 0)).flatten()] + [int(real.sum())]
        for start, end in zip(starts, starts[1:]):
            prompt_length, response = expected[tuple(ids[start:end].tolist())]
            item_labels = labels[start:end]
            assert (item_labels[:prompt_length] == IGNORE_INDEX).all()
            assert item_labels[prompt_length:].tolist() == ids[start + prompt_length : end].tolist()
            assert tokenizer.decode(item_labels[prompt_length:]) == response + tokenizer.eos_token
            found.append(response)
    assert sorted(found) == sorted(r for _, r in CONVERSATIONS)


def test_replay_text_is_trained_on_every_token_and_cut_to_the_row(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "Of Mans First Disobedience, and the Fruit\nOf that Forbidden Tree, whose mortal tast"
    whole = encode_text(tokenizer, text, 10_000)
    assert whole.labels == whole.input_ids
    assert tokenizer.decode(whole.input_ids) == text + tokenizer.eos_token
    cut = encode_text(tokenizer, text, 8)
    assert cut.input_ids == whole.input_ids[:8] and cut.labels == cut.input_ids


def test_packing_is_best_fit_decreasing_and_drops_items_that_do_not_fit() -> None:
    items = [Encoded([1] * n, [1] * n) for n in (5, 3, 8, 2, 11)]
    rows, drops = pack(items, max_length=10, packing=True)
    assert [row["seq_lengths"] for row in rows] == [[8, 2], [5, 3]]
    assert drops == {TOO_LONG: 1}
    unpacked, _ = pack(items, max_length=10, packing=False)
    assert [row["seq_lengths"] for row in unpacked] == [[5], [3], [8], [2]]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_a_packed_item_sees_only_itself(model_dir: Path, attn_implementation: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn_implementation).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first, second = (encode(tokenizer, m, r) for m, r in CONVERSATIONS[:2])
    rows, _ = pack([first, second], max_length=len(first) + len(second), packing=True)
    padded, _ = pack([first], max_length=len(first), packing=True)
    batch = PackedCollator(tokenizer.pad_token_id, attn_implementation)(rows + padded)  # row 1: `first`, then padding
    batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch).logits  # (2, T, V)
        alone = {tuple(e.input_ids): model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in (first, second)}
    offset = 0
    for length in rows[0]["seq_lengths"]:
        ids = tuple(batch["input_ids"][0, offset : offset + length].tolist())
        torch.testing.assert_close(packed[0, offset : offset + length], alone[ids], atol=1e-5, rtol=1e-4)
        offset += length
    torch.testing.assert_close(packed[1, : len(first)], alone[tuple(first.input_ids)], atol=1e-5, rtol=1e-4)
