"""Token ids of many texts, each the same as ``tokenizer.encode(text).ids``, at corpus speed.

A byte-level tokenizer cuts a text into pre-tokens with one regular expression (GPT-2's), and
its model turns each pre-token into ids on its own. So a text's ids are its pre-tokens' ids in
order, and since natural text repeats its words (a few thousand of them make most of a corpus),
``TextEncoder`` cuts the texts itself, looks each pre-token up in a cache, and hands the
tokenizers library only the pre-tokens it has not seen, in one batch call. This is how tiktoken
encodes; the library's own pipeline spends more on each pre-token (offsets, alignments) than
SentencePiece spends on a whole text.

The cut uses Python's ``re``, whose character classes come from Python's Unicode tables, where
the library's regex engine has its own. They agree on every code point but those listed in
``_LIBRARY_CATEGORIES`` and ``_LIBRARY_ASCII``, found by comparing both on every code point
(``tests/tasks/tokenizer/test_text_encoder.py`` does it again for the installed versions); a text
holding one of those goes through the library whole.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

# GPT-2's pre-token pattern, as tokenizers' ByteLevel(use_regex=True) has it, in the classes
# ``re`` knows: a letter is a word character that is neither a digit nor "_", a digit is \d.
PRE_TOKEN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")

# Where ``re``'s classes and the library's differ: numbers that are not decimal digits (No, Nl:
# "²", "½", Roman numerals) are word characters to ``re`` but no letters; code points Python's
# tables leave unassigned (Cn) may be letters in the library's; and ``re`` counts the ASCII
# information separators as whitespace.
_LIBRARY_CATEGORIES = frozenset({"Cn", "No", "Nl"})
_LIBRARY_ASCII = re.compile("[\x1c-\x1f]")

# Pre-tokens kept per encoder; past this the cache starts again, so memory stays bounded
# whatever the corpus's vocabulary of words.
MAX_CACHED = 1 << 20


def needs_library(text: str) -> bool:
    """Whether ``text`` holds a character on which ``PRE_TOKEN`` and the library may cut differently."""
    if _LIBRARY_ASCII.search(text):
        return True
    return not text.isascii() and any(
        unicodedata.category(char) in _LIBRARY_CATEGORIES for char in set(text) if char >= "\x80"
    )


def cuts_like_pre_token(tokenizer: Tokenizer) -> bool:
    """Whether ``tokenizer``'s ids are its model's ids of ``PRE_TOKEN``'s pre-tokens, each on its own.

    That needs no normaliser, the byte-level pre-tokenizer with its regex and nothing prepended,
    a deterministic model (no BPE dropout), no tokens added around the text, and no added token
    that could be matched inside it (every added token special, and ``encode_special_tokens`` on,
    as ``load_encoder`` sets it).
    """
    pre = tokenizer.pre_tokenizer
    post = tokenizer.post_processor
    added = tokenizer.get_added_tokens_decoder().values()
    return (
        tokenizer.normalizer is None
        and isinstance(pre, pre_tokenizers.ByteLevel)
        and pre.use_regex
        and not pre.add_prefix_space
        and not getattr(tokenizer.model, "dropout", None)
        and (post is None or post.num_special_tokens_to_add(False) == 0)
        and (not added or (tokenizer.encode_special_tokens and all(token.special for token in added)))
    )


class TextEncoder:
    """``tokenizer.encode(text).ids`` of many texts at once, as int32 arrays, through a cache of pre-token ids.

    A tokenizer whose ids cannot be rebuilt from pre-tokens (``cuts_like_pre_token``) is used as
    it is, through ``encode_batch_fast``. Either way the library's calls run on its thread pool
    unless ``TOKENIZERS_PARALLELISM`` turns it off.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cached = cuts_like_pre_token(tokenizer)
        # A pre-token's ids as the bytes of an int32 array: a text's ids are then one bytes join.
        self._ids: dict[str, bytes] = {}

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        if not self.cached:
            return self._library(texts)
        if len(self._ids) > MAX_CACHED:
            self._ids.clear()
        pieces = [None if needs_library(text) else PRE_TOKEN.findall(text) for text in texts]
        self._learn(list(set().union(*(p for p in pieces if p is not None)).difference(self._ids)))
        whole = iter(self._library([text for text, p in zip(texts, pieces) if p is None]))
        lookup = self._ids.__getitem__
        return [next(whole) if p is None else np.frombuffer(b"".join(map(lookup, p)), dtype=np.int32) for p in pieces]

    def _learn(self, unseen: list[str]) -> None:
        """Cache the ids of pre-tokens not seen before, from one call of the library."""
        if not unseen:
            return
        # One sequence of words, not a batch of one-word texts: a text costs the library far more
        # than a word. word_ids says which word each id came from, and every word gives one id or more.
        encoding = self.tokenizer.encode(unseen, is_pretokenized=True, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int32).tobytes()
        starts = (np.flatnonzero(np.diff(np.asarray(encoding.word_ids))) + 1) * 4
        bounds = [0, *starts.tolist(), len(ids)]
        assert len(bounds) == len(unseen) + 1, "a pre-token gave no ids"
        self._ids.update(zip(unseen, (ids[start:end] for start, end in zip(bounds, bounds[1:]))))

    def _library(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch_fast leaves out the character offsets, which nothing here reads.
        return [np.asarray(encoding.ids, dtype=np.int32) for encoding in self.tokenizer.encode_batch_fast(texts)]
