import random
from collections import Counter

import numpy as np
import pytest
from datasketch import MinHashLSH

from ladder.config import build
from tasks.data import minhash
from tasks.data.dedup import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    REPEATED_NGRAMS,
    DedupConfig,
    DedupResult,
    deduplicate,
    repetition_stats,
)
from tasks.data.document import Document

SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date:
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance, or nature's changing course, untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee."""

SPAM = "Best deals on cheap watches, click here to buy now! " * 12 + "Limited offer for our loyal customers today."


def doc(i: int | str, text: str) -> Document:
    return Document(id=f"doc#{i}", source="test", text=text)


def random_text(rng: random.Random, vocabulary: list[str], words: int) -> str:
    lines = [" ".join(rng.choice(vocabulary) for _ in range(10)) for _ in range(words // 10)]
    return "\n".join(lines)


def mutate(text: str, rate: float, vocabulary: list[str], rng: random.Random) -> str:
    """Replace (or, one time in four, delete) each word with probability ``rate``."""
    out = []
    for word in text.split():
        if rng.random() >= rate:
            out.append(word)
        elif rng.random() < 0.75:
            out.append(rng.choice(vocabulary))
    return " ".join(out)


@pytest.fixture(scope="module")
def vocabulary() -> list[str]:
    rng = random.Random(7)
    return sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)})


@pytest.fixture(scope="module")
def planted(vocabulary: list[str]) -> tuple[list[Document], dict[str, tuple[str, float]]]:
    """120 unrelated documents, then one mutated copy of each: copy id -> (original id, exact Jaccard)."""
    rng = random.Random(0)
    bases = [doc(i, random_text(rng, vocabulary, 300)) for i in range(120)]
    rates = [0.003, 0.006, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15]
    copies, truth = [], {}
    for i, base in enumerate(bases):
        copy = doc(f"copy{i}", mutate(base.text, rates[i % len(rates)], vocabulary, rng))
        copies.append(copy)
        truth[copy.id] = (base.id, minhash.jaccard(base.text, copy.text, 5))
    return bases + copies, truth


def test_exact_copies_are_dropped_and_name_the_first_occurrence() -> None:
    a, b = doc(0, "Something is rotten in the state of Denmark."), doc(1, "The rest is silence.")
    again = doc(2, "something is ROTTEN in the\n  state of   Denmark.")
    result = deduplicate([a, b, again, doc(3, "The rest is silence.")], DedupConfig())

    assert [d.id for d in result.kept] == ["doc#0", "doc#1"]
    assert [(d.doc.id, d.reason, d.duplicate_of) for d in result.dropped] == [
        ("doc#2", EXACT_DUPLICATE, "doc#0"),
        ("doc#3", EXACT_DUPLICATE, "doc#1"),
    ]
    assert result.counts() == {"kept": 2, EXACT_DUPLICATE: 2}


def test_planted_near_duplicates_are_found_without_false_positives(planted) -> None:
    docs, truth = planted
    jaccards = [j for _, j in truth.values()]
    assert sum(j >= 0.9 for j in jaccards) >= 20 and sum(j < 0.5 for j in jaccards) >= 20  # the plant covers both ends

    result = deduplicate(docs, DedupConfig(exact=False, repetition=False))

    texts = {d.id: d.text for d in docs}
    kept = {d.id for d in result.kept}
    dropped = {d.doc.id: d for d in result.dropped}
    assert {d.reason for d in result.dropped} == {NEAR_DUPLICATE}
    assert all(d.duplicate_of in kept for d in result.dropped)
    high = [c for c, (_, j) in truth.items() if j >= 0.9]
    assert sum(c in dropped for c in high) / len(high) >= 0.95
    assert all(minhash.jaccard(texts[d.doc.id], texts[d.duplicate_of], 5) >= 0.5 for d in result.dropped)
    assert not any(c in dropped for c, (_, j) in truth.items() if j < 0.5)


def test_signatures_estimate_the_exact_jaccard(planted) -> None:
    docs, truth = planted
    index = {d.id: i for i, d in enumerate(docs)}
    tokens = minhash.tokenize([d.text for d in docs])
    sigs = minhash.signatures(*minhash.ngram_hashes(tokens, 5, short_docs=True), num_perm=256, seed=3)
    errors = [abs((sigs[index[c]] == sigs[index[b]]).mean() - j) for c, (b, j) in truth.items()]
    # 256 permutations: standard error <= 0.031 per pair; a biased family shows up in the mean.
    assert np.mean(errors) < 0.03 and max(errors) < 0.12


def test_signatures_do_not_depend_on_blocks(planted, monkeypatch) -> None:
    docs, _ = planted
    texts = ["", docs[0].text * 20, "one", *(d.text for d in docs[1:6])]  # empty, longer than a block, short
    shingles, offsets = minhash.ngram_hashes(minhash.tokenize(texts), 5, short_docs=True)
    a, b = minhash.permutations(64, seed=5)
    x = shingles >> np.uint64(32)
    direct = [(np.multiply.outer(x[lo:hi], a) + b).min(axis=0) if hi > lo else np.full(64, minhash.EMPTY)
              for lo, hi in zip(offsets[:-1], offsets[1:])]
    monkeypatch.setattr(minhash, "_BLOCK_SHINGLES", 100)
    assert np.array_equal(minhash.signatures(shingles, offsets, 64, seed=5), np.stack(direct))


def test_near_duplicates_keep_first_occurrence_semantics() -> None:
    """A~B and B~C but not A~C: B goes, C stays, since only a kept document can stand in for one."""
    a = np.arange(128, dtype=np.uint64)
    b = a.copy()
    b[[0, 8, 16, 24, 32, 40, 48, 56, 1, 9, 17, 25]] += 1000  # 12 changes, all in bands 0..7
    c = b.copy()
    c[[64, 72, 80, 88, 96, 104, 112, 120, 65, 73, 81, 89]] += 1000  # 12 more, in bands 8..15
    sigs = np.stack([a, b, c])
    assert minhash.first_kept_duplicates(sigs, bands=16, rows=8, threshold=0.85) == {1: 0}


def test_repeated_ngrams_drop_spam_and_keep_verse() -> None:
    result = deduplicate([doc(0, SONNET), doc(1, SPAM)], DedupConfig())

    assert [d.id for d in result.kept] == ["doc#0"]
    (drop,) = result.dropped
    assert (drop.doc.id, drop.reason, drop.duplicate_of) == ("doc#1", REPEATED_NGRAMS, None)
    assert "gram_char_frac" in drop.detail


def reference_stats(text: str, n: int) -> tuple[float, float]:
    """(top, dup) n-gram character fractions, computed the slow and obvious way."""
    ws = minhash.words(text)
    chars = sum(map(len, ws))
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    counts = Counter(grams)
    top = max((c * sum(map(len, g)) for g, c in counts.items() if c > 1), default=0)
    covered, seen = [False] * len(ws), set()
    for i, g in enumerate(grams):
        if g in seen:
            covered[i : i + n] = [True] * n
        seen.add(g)
    return top / chars, sum(len(w) for w, c in zip(ws, covered) if c) / chars


def test_repetition_stats_match_a_direct_computation() -> None:
    rng = random.Random(1)
    texts = [" ".join(rng.choice(["la", "fa", "sol", "mi", "do re"]) for _ in range(rng.randint(5, 60))) for _ in range(30)]
    texts += [SONNET, SPAM]
    stats = repetition_stats(minhash.tokenize(texts), [2, 3], [3, 5, 7])
    for i, text in enumerate(texts):
        for n in (2, 3, 5, 7):
            top, dup = reference_stats(text, n)
            if n in (2, 3):
                assert stats[f"top_{n}gram_char_frac"][i] == pytest.approx(top)
            if n in (3, 5, 7):
                assert stats[f"dup_{n}gram_char_frac"][i] == pytest.approx(dup)


def test_same_input_gives_the_same_result(planted) -> None:
    docs, _ = planted
    docs = docs + [doc("spam", SPAM), doc("again", docs[0].text)]
    first, second = deduplicate(docs, DedupConfig()), deduplicate(list(docs), DedupConfig())

    assert first == second
    assert set(first.counts()) == {"kept", NEAR_DUPLICATE, EXACT_DUPLICATE, REPEATED_NGRAMS}


def test_documents_without_words_are_never_near_duplicates() -> None:
    docs = [doc(0, "..."), doc(1, "!!!"), doc(2, "two words"), doc(3, "Two, words!")]
    result = deduplicate(docs, DedupConfig(exact=False, repetition=False))

    # too short for a 5-word shingle, the whole word sequence is the one shingle
    assert [(d.doc.id, d.duplicate_of) for d in result.dropped] == [("doc#3", "doc#2")]
    assert deduplicate([], DedupConfig()) == DedupResult(kept=[], dropped=[])


@pytest.mark.parametrize(("threshold", "num_perm", "weight"), [(0.5, 128, 0.5), (0.8, 128, 0.5), (0.8, 128, 0.8), (0.9, 64, 0.5)])
def test_lsh_params_are_the_ones_datasketch_picks(threshold: float, num_perm: int, weight: float) -> None:
    reference = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(1 - weight, weight))
    assert minhash.lsh_params(threshold, num_perm, weight) == (reference.b, reference.r)


def test_bad_config_and_input_are_refused() -> None:
    with pytest.raises(ValueError, match="bands and dedup.rows together"):
        build(DedupConfig, {"bands": 4})
    with pytest.raises(ValueError, match="exceeds num_perm"):
        build(DedupConfig, {"bands": 20, "rows": 10})
    with pytest.raises(ValueError, match="unknown_key|extra"):
        build(DedupConfig, {"unknown_key": 1})
    with pytest.raises(ValueError, match="'doc#0' twice"):
        deduplicate([doc(0, "a"), doc(0, "b")], DedupConfig())
