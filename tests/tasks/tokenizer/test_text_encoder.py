"""TextEncoder: the ids of the tokenizers library, from its own cut of the text and a cache of word ids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from tasks.tokenizer import encode
from tasks.tokenizer.encode import PRE_TOKEN, TextEncoder, needs_library
from tasks.tokenizer.stage import TOKENIZER_DIR
from tasks.tokenizer.train import load_encoder
from tokenizer_corpus import ODD_TEXTS

# Text on which Python's regex classes and the library's differ, and text around them.
DIFFERING_TEXTS = [
    "numbers that are no digits: x² ½ Ⅻ 2½ and ²2",
    "ASCII separators\x1cbetween\x1d\x1e\x1fwords",
    "code points Python's tables leave unassigned: a\u0558b and \U000e0080",
    "contractions it's we'll they've I'm you'd 'twas don't O'Neil's",
]


def test_the_cut_is_the_librarys_on_every_code_point_it_is_trusted_with() -> None:
    # Every code point, in the contexts that decide a cut (after and before a letter, a space, a
    # digit, punctuation, a newline), cut by PRE_TOKEN and by the library's byte-level
    # pre-tokenizer: the same pieces wherever needs_library does not send the text to the library.
    # A new Python or tokenizers release with other Unicode tables fails here, not in a shard.
    library = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trusted = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF and not needs_library(chr(c))]
    assert len(trusted) > 250_000
    for start in range(0, len(trusted), 512):
        text = "".join(f"a{c}a {c}1{c}!{c} {c}{c}\n{c}" for c in trusted[start : start + 512])
        ours = [match.span() for match in PRE_TOKEN.finditer(text)]
        theirs = [offsets for _, offsets in library.pre_tokenize_str(text)]
        if ours != theirs:
            first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            pytest.fail(f"cut differs near {text[ours[first][0] : ours[first][1] + 2]!r}: {ours[first]} vs {theirs[first]}")


def test_text_the_cut_would_get_wrong_goes_to_the_library() -> None:
    assert not needs_library("plain words, café, 日本語 and 42")
    assert all(needs_library(text) for text in DIFFERING_TEXTS[:3])


def test_ids_are_the_librarys_for_the_chosen_tokenizer_with_a_cache_that_starts_again(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = load_encoder(built / TOKENIZER_DIR / "tokenizer.json")
    text_encoder = TextEncoder(tokenizer)
    assert text_encoder.cached
    texts = ODD_TEXTS + DIFFERING_TEXTS
    expected = [tokenizer.encode(text).ids for text in texts]
    # A cache of at most 8 words starts again at every call past it, and the ids stay the same.
    monkeypatch.setattr(encode, "MAX_CACHED", 8)
    for start, stop in ((0, 1), (0, len(texts)), (3, len(texts))):
        assert [ids.tolist() for ids in text_encoder(texts[start:stop])] == expected[start:stop]
    assert len(text_encoder._ids) <= len({piece for text in texts[3:] for piece in PRE_TOKEN.findall(text)})


def test_a_tokenizer_that_adds_tokens_is_encoded_by_the_library(built: Path) -> None:
    # A text's ids are its words' ids only when nothing is added around it or matched inside it.
    tokenizer = load_encoder(built / TOKENIZER_DIR / "tokenizer.json")
    tokenizer.encode_special_tokens = False
    assert not TextEncoder(tokenizer).cached
    assert [ids.tolist() for ids in TextEncoder(tokenizer)(["a <|endoftext|> b"])] == [
        tokenizer.encode("a <|endoftext|> b").ids
    ]
