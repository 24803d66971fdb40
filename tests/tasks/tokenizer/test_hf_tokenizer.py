"""The chosen tokenizer in HF format: AutoTokenizer loads it with no custom code; the chat template renders."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2 import TemplateError
from transformers import AutoTokenizer

from tasks.tokenizer.stage import TOKENIZER_DIR

from tokenizer_corpus import ODD_TEXTS, TINY


@pytest.fixture(scope="module")
def hf(built: Path):
    return AutoTokenizer.from_pretrained(str(built / TOKENIZER_DIR))


def test_auto_tokenizer_loads_the_saved_directory_with_its_special_tokens(built: Path, hf) -> None:
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (built / TOKENIZER_DIR).iterdir()}
    assert hf.eos_token == hf.bos_token == TINY.boundary_token
    assert hf.pad_token == TINY.pad_token and hf.pad_token_id != hf.eos_token_id
    assert set(TINY.special_tokens) <= set(hf.all_special_tokens)


def test_hf_encoding_round_trips_document_text(hf) -> None:
    for text in ODD_TEXTS:
        if "<|" in text:
            continue  # quoted special-token text is the packer's business (encode_special_tokens)
        ids = hf(text, add_special_tokens=True)["input_ids"]
        assert hf.decode(ids) == text


def test_chat_template_renders_roles_as_single_special_tokens(hf) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is Hamlet?"},
        {"role": "assistant", "content": "A prince."},
        {"role": "user", "content": "Of?"},
    ]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|system|>\nBe brief.<|endoftext|><|user|>\nWho is Hamlet?<|endoftext|>"
        "<|assistant|>\nA prince.<|endoftext|><|user|>\nOf?<|endoftext|><|assistant|>\n"
    )
    ids = hf(text, add_special_tokens=False)["input_ids"]
    assert ids.count(hf.convert_tokens_to_ids("<|user|>")) == 2
    assert ids.count(hf.eos_token_id) == 4


def test_chat_template_rejects_an_unknown_role(hf) -> None:
    with pytest.raises(TemplateError, match="unknown chat role narrator"):
        hf.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)
