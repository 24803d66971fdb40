import pytest

from tasks.data.config import MixtureConfig, SplitConfig
from tasks.data.document import Document
from tasks.data.split import split_and_mix


def _docs(n: int, source: str = "a") -> list[Document]:
    return [Document(f"{source}/f.txt#{i}", source, f"text {i}") for i in range(n)]


def test_split_is_deterministic_independent_of_input_order_and_near_its_fractions() -> None:
    docs = _docs(4000)
    cfg = SplitConfig(validation_fraction=0.1, test_fraction=0.05)
    first = split_and_mix(docs, cfg, MixtureConfig())
    again = split_and_mix(list(reversed(docs)), cfg, MixtureConfig())
    def ids(result):
        return {name: [d.id for d in docs] for name, docs in result.splits.items()}

    assert ids(first) == ids(again)
    assert len(first.splits["validation"]) == pytest.approx(400, abs=60)
    assert len(first.splits["test"]) == pytest.approx(200, abs=45)
    assert sum(map(len, first.splits.values())) == 4000
    # a different salt draws a different split
    other = split_and_mix(docs, SplitConfig(validation_fraction=0.1, test_fraction=0.05, salt="x"), MixtureConfig())
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
