import random
from collections import Counter, defaultdict

import pytest

from tasks.data.config import MixtureConfig, SplitConfig
from tasks.data.document import SPLITS, Document
from tasks.data.minhash import jaccard
from tasks.data.split import assign_groups, assign_split, record_id, split_and_mix, unit_hash

WORDS_PER_WORK = 2000
WORDS_PER_DOC = 200


def _docs(n: int, source: str = "a") -> list[Document]:
    return [Document(f"{source}/f.txt#{i}", source, f"text {i}") for i in range(n)]


def _ids(result) -> dict[str, list[str]]:
    return {name: [d.id for d in docs] for name, docs in result.splits.items()}


def _work(seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 8))) for _ in range(WORDS_PER_WORK)]


def _respelled(words: list[str], seed: int) -> list[str]:
    """An old-spelling edition: a fifth of the words respelled, which leaves it ~20% Jaccard (5-grams) from the modern."""
    rng = random.Random(seed)
    return [w + "e" if rng.random() < 0.2 else w for w in words]


def _file(path: str, source: str, words: list[str]) -> list[Document]:
    return [
        Document(f"{path}#{k}", source, " ".join(words[start : start + WORDS_PER_DOC]), {"file": path, "chunk": k})
        for k, start in enumerate(range(0, len(words), WORDS_PER_DOC))
    ]


def _corpus() -> list[Document]:
    """Source a: 12 works in two editions each; b: 4 works in one; c: 2 works (too few to hold one out)."""
    docs = []
    for i in range(12):
        words = _work(i)
        docs += _file(f"a/work{i}.txt", "a", words) + _file(f"a/work{i}_old.txt", "a", _respelled(words, 100 + i))
    for i in range(4):
        docs += _file(f"b/work{i}.txt", "b", _work(20 + i))
    for i in range(2):
        docs += _file(f"c/work{i}.txt", "c", _work(30 + i))
    return docs


def _split_of(result) -> dict[str, str]:
    return {d.id: name for name, docs in result.splits.items() for d in docs}


def test_editions_of_a_work_share_a_split_and_every_source_of_three_works_is_held_out() -> None:
    words = _work(0)
    assert 0.15 <= jaccard(" ".join(words), " ".join(_respelled(words, 100)), 5) <= 0.3  # the premise
    docs = _corpus()
    cfg = SplitConfig(validation_fraction=0.1, test_fraction=0.1)
    result = split_and_mix(docs, cfg, MixtureConfig())

    assert {k: v for k, v in result.groups.items() if len(v) > 1} == {
        f"a/work{i}.txt": [f"a/work{i}.txt", f"a/work{i}_old.txt"] for i in range(12)
    }
    split_of = _split_of(result)
    for members in result.groups.values():
        assert len({split_of[d.id] for d in docs if record_id(d) in members}) == 1, members
    for source, works in (("a", 12), ("b", 4)):
        per_split = {name: {record_id(d) for d in result.splits[name] if d.source == source} for name in SPLITS}
        total = sum(1 for d in docs if d.source == source)
        for name, fraction in (("validation", 0.1), ("test", 0.1)):
            held = sum(1 for d in result.splits[name] if d.source == source)
            assert held >= fraction * total, (source, name)
        assert all(per_split.values()), (source, per_split)
    assert {split_of[d.id] for d in docs if d.source == "c"} == {"train"}


def test_a_work_in_two_sources_keeps_the_split_the_first_source_gave_it() -> None:
    docs = _corpus()
    cfg = SplitConfig(validation_fraction=0.1, test_fraction=0.1)
    before = _split_of(split_and_mix(docs, cfg, MixtureConfig()))
    held_out = next(i for i in range(12) if before[f"a/work{i}.txt#0"] == "test")
    # another edition of that work in source c, whose two other works alone would all be train
    extra = _file("c/quoted.txt", "c", _respelled(_work(held_out), 7))
    after = _split_of(split_and_mix(docs + extra, cfg, MixtureConfig()))
    assert {after[d.id] for d in extra} == {"test"}
    assert all(after[d.id] == before[d.id] for d in docs if d.source != "c")


def test_the_work_split_is_deterministic_independent_of_input_order_and_salted() -> None:
    docs = _corpus()
    cfg = SplitConfig(validation_fraction=0.1, test_fraction=0.1)
    first = split_and_mix(docs, cfg, MixtureConfig())
    shuffled = list(docs)
    random.Random(1).shuffle(shuffled)
    again = split_and_mix(shuffled, cfg, MixtureConfig())
    assert _ids(first) == _ids(again) and first.groups == again.groups
    other = split_and_mix(docs, SplitConfig(validation_fraction=0.1, test_fraction=0.1, salt="x"), MixtureConfig())
    assert _ids(other)["test"] != _ids(first)["test"]


def test_group_by_document_splits_each_document_by_its_own_hash() -> None:
    docs = _corpus()
    cfg = SplitConfig(group_by="document", validation_fraction=0.1, test_fraction=0.1)
    result = split_and_mix(docs, cfg, MixtureConfig())
    assert _split_of(result) == {d.id: assign_split(d.id, cfg) for d in docs}
    assert all(members == [key] for key, members in result.groups.items())


def test_document_split_is_deterministic_independent_of_input_order_and_near_its_fractions() -> None:
    docs = _docs(4000)
    cfg = SplitConfig(group_by="document", validation_fraction=0.1, test_fraction=0.05)
    first = split_and_mix(docs, cfg, MixtureConfig())
    again = split_and_mix(list(reversed(docs)), cfg, MixtureConfig())

    assert _ids(first) == _ids(again)
    assert len(first.splits["validation"]) == pytest.approx(400, abs=60)
    assert len(first.splits["test"]) == pytest.approx(200, abs=45)
    assert sum(map(len, first.splits.values())) == 4000
    # a different salt draws a different split
    other_cfg = SplitConfig(group_by="document", validation_fraction=0.1, test_fraction=0.05, salt="x")
    other = split_and_mix(docs, other_cfg, MixtureConfig())
    assert [d.id for d in other.splits["test"]] != [d.id for d in first.splits["test"]]


def test_mixture_weights_copy_and_sample_training_documents() -> None:
    docs = _docs(2000, "a") + _docs(2000, "b") + _docs(500, "c")
    cfg = SplitConfig(validation_fraction=0.0, test_fraction=0.0)
    result = split_and_mix(docs, cfg, MixtureConfig(weights={"a": 2, "b": 0.5, "c": 0}))
    train = result.splits["train"]
    by_source = {s: [d for d in train if d.source == s] for s in "abc"}
    assert len(by_source["a"]) == 4000
    assert {d.meta.get("copy") for d in by_source["a"]} == {None, 1}
    assert len(by_source["b"]) == pytest.approx(1000, abs=100)
    assert by_source["c"] == []
    reasons = {q.reason for q in result.quarantined}
    assert reasons == {"mixture_downsampled"}
    assert len(result.quarantined) == 500 + 2000 - len(by_source["b"])


def test_a_weight_for_an_unknown_source_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\['typo'\].*\['a'\]"):
        split_and_mix(_docs(3), SplitConfig(), MixtureConfig(weights={"typo": 2}))


def _reference_assign_groups(docs: list[Document], group_of: dict[str, str], cfg: SplitConfig) -> dict[str, str]:
    """The split by work as first written: a scan of every pending work per step, quadratic, plainly right."""
    sizes: dict[str, Counter[str]] = defaultdict(Counter)
    for doc in docs:
        sizes[doc.source][group_of[doc.id]] += 1
    split_of: dict[str, str] = {}
    for source in sorted(sizes):
        here = sizes[source]
        ordered = sorted(here, key=lambda g: (unit_hash(cfg.salt, "split", g), g))
        held: Counter[str] = Counter()
        for group in ordered:
            if group in split_of:
                held[split_of[group]] += here[group]
        pending = [g for g in ordered if g not in split_of]
        total = sum(here.values())
        if len(ordered) >= 3:
            for split, fraction in (("test", cfg.test_fraction), ("validation", cfg.validation_fraction)):
                while len(pending) > 1 and held[split] < fraction * total:
                    fitting = [g for g in pending if held[split] + here[g] <= 2 * fraction * total]
                    if not fitting and held[split]:
                        break
                    group = fitting[0] if fitting else min(pending, key=lambda g: here[g])
                    pending.remove(group)
                    split_of[group] = split
                    held[split] += here[group]
        split_of.update(dict.fromkeys(pending, "train"))
    return split_of


@pytest.mark.parametrize("seed", range(40))
def test_the_split_by_work_matches_the_plain_quadratic_reference(seed: int) -> None:
    """A few hundred records in works of skewed sizes, some spanning sources: the same assignment."""
    rng = random.Random(seed)
    sources = [f"s{k}" for k in range(rng.randint(1, 4))]
    works = [f"w{k}" for k in range(rng.choice([3, 4, 8, 30, 150]))]
    docs, group_of = [], {}
    for i in range(rng.randint(200, 400)):
        # a few works hold many records, so some are too large to fit a split and are passed over
        work = works[min(int(rng.paretovariate(1.0)) - 1, len(works) - 1)] if rng.random() < 0.3 else rng.choice(works)
        doc = Document(f"r{i}#0", rng.choice(sources), "x")
        docs.append(doc)
        group_of[doc.id] = work
    cfg = SplitConfig(
        validation_fraction=rng.choice([0.0, 0.02, 0.1, 0.3]), test_fraction=rng.choice([0.0, 0.05, 0.2, 0.4]),
        salt=str(seed),
    )
    assert assign_groups(docs, group_of, cfg) == _reference_assign_groups(docs, group_of, cfg)


@pytest.mark.timeout(60)  # the quadratic split took minutes on these 100k records
def test_a_hundred_thousand_tiny_records_go_through_the_split() -> None:
    docs = [Document(f"a/r{i}.txt#0", "a", f"tiny record number {i}") for i in range(100_000)]
    cfg = SplitConfig(validation_fraction=0.1, test_fraction=0.1)
    result = split_and_mix(docs, cfg, MixtureConfig())
    assert sum(map(len, result.splits.values())) == len(docs)
    for name in ("validation", "test"):
        assert 0.1 * len(docs) <= len(result.splits[name]) <= 0.2 * len(docs)
