"""A small curated dataset in the data stage's layout: pseudo-verse passages from two sources."""

from __future__ import annotations

import random
from pathlib import Path

from tasks.data.document import Document
from tasks.evals.config import SuiteConfig

# A suite sized to build in a second.
SMALL = SuiteConfig(items_per_task=16, fewshot_pool=6, ppl_docs_per_source=4, num_fewshot=2)

WORDS = (
    "the king queen lord lady night day love death sword crown heaven earth sweet gentle noble "
    "thou thee thy art hath doth shall would could speak hear see come go stay fair foul ill good"
).split()


SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru sa se si so su ta te ti to tu".split()


def lexicon(size: int, seed: int = 0) -> tuple[str, ...]:
    """``size`` made-up words of one to three syllables: a vocabulary too large for a tiny tokenizer to learn whole,
    so that text costs about as many tokens per character as English does the tiny profile's tokenizers."""
    rng = random.Random(seed)
    return tuple(sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(size)}))


def passage(rng: random.Random, words: tuple[str, ...] = WORDS, line_words: tuple[int, int] = (4, 10)) -> str:
    """Ten to thirty lines of ``line_words`` (four to ten) words, capitalised, some with closing punctuation."""
    lines = [
        " ".join(rng.choice(words) for _ in range(rng.randint(*line_words))).capitalize() + rng.choice(["", ",", ".", ";", "!"])
        for _ in range(rng.randint(10, 30))
    ]
    return "\n".join(lines)


def write_curated(
    data_dir: Path, sizes: dict[str, int], seed: int = 0, words: tuple[str, ...] = WORDS, line_words: tuple[int, int] = (4, 10)
) -> None:
    """``data_dir/curated/<split>/part-00000.jsonl`` with ``sizes[split]`` documents (see :func:`passage`), alternating sources."""
    rng = random.Random(seed)
    for split, count in sizes.items():
        directory = data_dir / "curated" / split
        directory.mkdir(parents=True, exist_ok=True)
        docs = [Document(f"{split}/{i:04d}#0", ("verse", "prose")[i % 2], passage(rng, words, line_words)) for i in range(count)]
        (directory / "part-00000.jsonl").write_text("".join(d.to_json() + "\n" for d in docs), encoding="utf-8")
    # What the data stage records beside the splits; lineage reads the raw corpus's hash from it.
    (data_dir / "dataset.json").write_text('{"corpus": "synthetic-seed-%d"}\n' % seed, encoding="utf-8")


def append_train_document(data_dir: Path, doc: Document) -> None:
    """Add one document to the train split (as a leak from an eval set would arrive)."""
    part = data_dir / "curated" / "train" / "part-00000.jsonl"
    with part.open("a", encoding="utf-8") as fh:
        fh.write(doc.to_json() + "\n")
