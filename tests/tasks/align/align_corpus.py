"""A small curated corpus the alignment tasks can be learned from, its tokenizer and a briefly pretrained base model.

Two sources of four titles each; every title has its own words and every source its own, so
a model can tell works and authors apart from a passage, while lines are random draws, so no
word 13-gram repeats across documents (the contamination check finds nothing by accident).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.llama import ModelConfig
from tasks.data.document import Document, iter_split
from tasks.tokenizer.config import TokenizerTrainingConfig
from tasks.tokenizer.hf import save_hf
from tasks.tokenizer.train import train_candidate
from tests.tiny_lm import save_tiny_lm

COMMON = "the and of to in with my thy our all".split()
SOURCES = {
    "shakespeare": (
        "thou thee hath doth art sirrah prithee anon ere wherefore".split(),
        {
            "Hamlet": "ghost prince denmark skull poison ophelia rotten mirror".split(),
            "Macbeth": "witch dagger crown thane blood forest spot raven".split(),
            "The Tempest": "island storm spirit magic ship sea monster airy".split(),
            "Othello": "moor handkerchief jealous venice general lieutenant honest willow".split(),
        },
    ),
    "milton": (
        "heaven hell angel eternal divine fallen celestial abyss chaos empyreal".split(),
        {
            "Paradise Lost": "serpent eden apple garden eve adam satan throne".split(),
            "Samson Agonistes": "strength hair temple blind philistine gaza pillar captive".split(),
            "Comus": "lady enchanter wood chastity brothers cup nymph virtue".split(),
            "Lycidas": "shepherd drowned laurel myrtle flock pastoral muse lament".split(),
        },
    ),
}
MODEL = ModelConfig(vocab_size=640, d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, intermediate_size=192, max_seq_len=256)


def passage(rng: random.Random, source_words: list[str], title_words: list[str]) -> str:
    """Eight to twelve lines of four to seven words: mostly the title's words, then the source's, a few common ones."""
    lines = []
    for _ in range(rng.randint(8, 12)):
        pools = rng.choices([title_words, source_words, COMMON], weights=[5, 3, 2], k=rng.randint(4, 7))
        lines.append(" ".join(rng.choice(pool) for pool in pools).capitalize())
    return "\n".join(lines)


def write_curated(data_dir: Path, per_title: dict[str, int], seed: int = 0) -> None:
    """``data_dir/curated/<split>/part-00000.jsonl`` with ``per_title[split]`` documents of every title."""
    rng = random.Random(seed)
    for split, count in per_title.items():
        docs = []
        for source, (source_words, titles) in SOURCES.items():
            for title, title_words in titles.items():
                for i in range(count):
                    doc_id = f"{source}/{title.replace(' ', '_')}.txt#{split}{i}"
                    docs.append(Document(doc_id, source, passage(rng, source_words, title_words), {"title": title}))
        rng.shuffle(docs)
        directory = data_dir / "curated" / split
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "part-00000.jsonl").write_text("".join(d.to_json() + "\n" for d in docs), encoding="utf-8")
    # What the data stage records beside the splits; lineage reads the raw corpus's hash from it.
    (data_dir / "dataset.json").write_text('{"corpus": "synthetic-seed-%d"}\n' % seed, encoding="utf-8")


def train_tokenizer(data_dir: Path, out: Path) -> Path:
    """The tokenizer stage's BPE with its special tokens and chat template, trained on the train split."""
    cfg = TokenizerTrainingConfig(candidates=["bpe"], vocab_sizes=[MODEL.vocab_size])
    texts = (doc.text for doc in iter_split(data_dir, "train"))
    save_hf(train_candidate("bpe", MODEL.vocab_size, texts, cfg), cfg, out)
    return out


def pretrain_base(data_dir: Path, tokenizer_dir: Path, out: Path, steps: int = 150) -> Path:
    """A tiny Llama trained for ``steps`` steps of plain next-token prediction on the train split, saved with its tokenizer."""
    return save_tiny_lm(MODEL, tokenizer_dir, data_dir, out, steps)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op torch thread: on 2 cores shared with other processes, two threads ran these tiny models ~10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
