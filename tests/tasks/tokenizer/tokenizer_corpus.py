"""A small curated dataset in the data stage's layout: deterministic pseudo-verse with text that breaks lossy tokenizers."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

from tasks.data.document import Document
from tasks.tokenizer.config import TokenizerTrainingConfig

WORDS = (
    "the king queen lord lady night day love death sword crown heaven earth sweet gentle noble "
    "thou thee thy art hath doth shall would could speak hear see come go stay fair foul ill good "
    "café naïve façade jalapeño Zürich São Paulo coöperate résumé"
).split()

# Text that breaks lossy tokenizers: decomposed accents, odd whitespace, symbols, scripts, emoji,
# and the boundary token's own text, which must stay plain text inside a document.
ODD_TEXTS = [
    unicodedata.normalize("NFD", "café naïve façade"),
    unicodedata.normalize("NFC", "café naïve façade"),
    "tabs\tand\t\tmore tabs\t",
    "  leading and   multiple   spaces  and trailing  ",
    "lines\n\n\nand\r\nwindows\rreturns\n",
    "日本語のテキスト 中文 한국어 ελληνικά русский עברית العربية",
    "emoji 😀👍🏽 flags 🇫🇷 zero\u200bwidth nbsp\u00a0here",
    "quoted <|endoftext|> and <|user|> inside a document",
    "symbols ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./ and ▁ metaspace",
    "",
]


def make_document(rng: random.Random, index: int, source: str) -> Document:
    """A deterministic pseudo-verse document of a few hundred words, sometimes with odd text."""
    lines = []
    for _ in range(rng.randint(10, 40)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(ODD_TEXTS))
        indent = "    " if source == "verse" and rng.random() < 0.3 else ""
        lines.append(indent + " ".join(words).capitalize() + rng.choice([",", ".", ";", "!", "?", ""]))
    return Document(id=f"{source}/{index:05d}#0", source=source, text="\n".join(lines), meta={"words": len(lines)})


def write_curated(data_dir: Path, sizes: dict[str, int], seed: int = 0) -> None:
    """``data_dir/curated/<split>/part-00000.jsonl`` with ``sizes[split]`` documents from two sources."""
    rng = random.Random(seed)
    for split, count in sizes.items():
        directory = data_dir / "curated" / split
        directory.mkdir(parents=True, exist_ok=True)
        docs = [make_document(rng, i, ("verse", "prose")[i % 2]) for i in range(count)]
        (directory / "part-00000.jsonl").write_text("".join(doc.to_json() + "\n" for doc in docs), encoding="utf-8")


# Every kind at two sizes: large enough for SentencePiece to hold this corpus's characters.
TINY = TokenizerTrainingConfig(candidates=["bpe", "unigram", "sentencepiece"], vocab_sizes=[512, 768])
