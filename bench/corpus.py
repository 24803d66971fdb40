"""A generated prose corpus of a chosen size, with planted exact copies and near-duplicates.

Run: ``.venv/bin/python bench/corpus.py OUT_DIR --mb 50``. Documents are re-composed from the lines
of the example corpus (``tasks.data.corpus.fetch_example_corpus()``): each is a few paragraphs of
lines drawn at random, so two documents share only the 5-grams inside the lines they both drew.
(Runs of consecutive lines would make every document resemble hundreds of others once the corpus is
many times the example's 12 MB, a web of weak similarity real corpora do not have.) Some documents are followed (later in the corpus) by an
exact copy and some by a near-duplicate: a copy with a few words replaced, whose exact Jaccard of
word 5-gram sets (``tasks.data.minhash.jaccard``) with its original is at least ``--min-jaccard``.
Files are ``part-NNNNN.jsonl`` of about ``--file-mb`` each, records ``{"text": ...}``; ``planted.json``
beside them (outside the corpus directory) lists every planted pair as record ids
(``<file>:<line>``) with their Jaccard.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tasks.data import minhash
from tasks.data.corpus import example_inputs, fetch_example_corpus

SHINGLE_WORDS = 5  # the data stage's default dedup.shingle_words
# Below twice the default data.normalize.min_chars (1500), a record is cut into one document, so a
# planted record pair is a planted document pair and recall can be read from the quarantine.
MAX_CHARS = 2900
DEDUP_REASONS = ("exact_duplicate", "near_duplicate")


@dataclass
class Planted:
    """A planted pair: the later record duplicates the earlier one."""

    original: str  # record id
    copy: str  # record id
    kind: str  # exact or near
    jaccard: float


def example_lines() -> list[str]:
    """The distinct non-blank lines of the example corpus, in corpus order.

    Distinct, because the licence lines repeated in every Gutenberg file would otherwise be drawn
    a hundred times as often as a line of verse.
    """
    lines: dict[str, None] = {}
    for f in example_inputs(fetch_example_corpus()):
        text = f.path.read_text(encoding="utf-8-sig", errors="replace")
        lines.update((line.rstrip(), None) for line in text.splitlines() if line.strip())
    return list(lines)


def compose(lines: list[str], rng: random.Random) -> str:
    """A record of 3 to 6 paragraphs of 4 to 10 lines drawn at random, at most MAX_CHARS long."""
    paragraphs: list[str] = []
    size = 0
    for _ in range(rng.randint(3, 6)):
        paragraph = "\n".join(rng.choice(lines) for _ in range(rng.randint(4, 10)))
        if paragraphs and size + 2 + len(paragraph) > MAX_CHARS:
            break
        paragraphs.append(paragraph[:MAX_CHARS])
        size += len(paragraph) + 2
    return "\n\n".join(paragraphs)


def near_copy(text: str, min_jaccard: float, rng: random.Random) -> tuple[str, float]:
    """``text`` with a few words replaced by others of it, Jaccard at least ``min_jaccard`` (fewer edits if not)."""
    words = text.split(" ")
    edits = max(1, int(len(text.split()) * rng.uniform(0.005, 0.02)))
    while True:
        changed = list(words)
        for _ in range(edits):
            changed[rng.randrange(len(changed))] = rng.choice(words)
        copy = " ".join(changed)
        similarity = minhash.jaccard(text, copy, SHINGLE_WORDS)
        if similarity >= min_jaccard or edits == 1:
            return copy, similarity
        edits = max(1, edits // 2)


def generate(out_dir: Path, megabytes: float, file_mb: float, near_share: float, exact_share: float,
             min_jaccard: float, seed: int) -> list[Planted]:
    """Write the corpus into ``out_dir`` (see the module docstring); returns the planted pairs."""
    rng = random.Random(seed)
    lines = example_lines()
    out_dir.mkdir(parents=True, exist_ok=True)
    target, per_file = int(megabytes * 1e6), int(file_mb * 1e6)
    planted: list[Planted] = []
    pending: list[tuple[str, str, str, float]] = []  # (original id, text, kind, jaccard) to place later
    written, part, line_no = 0, 0, 0
    fh = (out_dir / f"part-{part:05d}.jsonl").open("w", encoding="utf-8")
    while written < target:
        if line_no and fh.tell() >= per_file:
            fh.close()
            part, line_no = part + 1, 0
            fh = (out_dir / f"part-{part:05d}.jsonl").open("w", encoding="utf-8")
        # a planted copy lands a few records after its original, often in a later file
        if pending and rng.random() < 0.5:
            original, text, kind, similarity = pending.pop(0)
        else:
            original, text, kind, similarity = "", compose(lines, rng), "", 1.0
        line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
        fh.write(line)
        line_no += 1
        written += len(line.encode())
        rid = f"part-{part:05d}.jsonl:{line_no}"
        if kind:
            planted.append(Planted(original, rid, kind, similarity))
            continue
        draw = rng.random()
        if draw < exact_share:
            pending.append((rid, text, "exact", 1.0))
        elif draw < exact_share + near_share:
            copy, similarity = near_copy(text, min_jaccard, rng)
            pending.append((rid, copy, "near", similarity))
    fh.close()
    return planted


def planted_recall(planted: list[dict[str, object]], data_dir: Path, min_jaccard: float) -> dict[str, float]:
    """Recall of the data stage on the planted pairs at or above ``min_jaccard``, from the curated dataset at
    ``data_dir`` (its ``quarantine.jsonl``): a copy counts as found when its document was dropped as an exact
    or near duplicate. Pairs whose copy another rule dropped first (quality, repetition) are left out.
    """
    reasons = {}
    with (data_dir / "quarantine.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            entry = json.loads(line)
            reasons[entry["id"]] = entry["reason"]
    found: dict[str, list[bool]] = {"exact": [], "near": []}
    for pair in planted:
        reason = reasons.get(f"{pair['copy']}#0")
        if float(pair["jaccard"]) >= min_jaccard and (reason is None or reason in DEDUP_REASONS):
            found[str(pair["kind"])].append(reason is not None)
    return {kind: sum(hits) / len(hits) if hits else 1.0 for kind, hits in found.items()} | {
        f"{kind}_pairs": float(len(hits)) for kind, hits in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="corpus directory to write (planted.json goes beside it)")
    parser.add_argument("--mb", type=float, default=50, help="corpus size in MB of jsonl")
    parser.add_argument("--file-mb", type=float, default=8, help="size of each jsonl file in MB")
    parser.add_argument("--near-share", type=float, default=0.05, help="share of documents given a near-duplicate")
    parser.add_argument("--exact-share", type=float, default=0.02, help="share of documents given an exact copy")
    parser.add_argument("--min-jaccard", type=float, default=0.8, help="least Jaccard of a planted near-duplicate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", type=Path, default=None, metavar="DATA_DIR",
                        help="instead of generating: recall on the planted pairs of the corpus at out_dir, read from "
                        "the curated dataset at DATA_DIR (the workspace's data/)")
    args = parser.parse_args()
    truth = args.out_dir.parent / f"{args.out_dir.name}.planted.json"
    if args.score is not None:
        recall = planted_recall(json.loads(truth.read_text(encoding="utf-8")), args.score, args.min_jaccard)
        print(f"recall at Jaccard >= {args.min_jaccard}: near {recall['near']:.4f} of {recall['near_pairs']:.0f}, "
              f"exact {recall['exact']:.4f} of {recall['exact_pairs']:.0f}")
        return
    planted = generate(args.out_dir, args.mb, args.file_mb, args.near_share, args.exact_share, args.min_jaccard, args.seed)
    truth.write_text(json.dumps([p.__dict__ for p in planted], indent=1) + "\n", encoding="utf-8")
    near = sum(p.kind == "near" for p in planted)
    print(f"{args.out_dir}: {args.mb} MB, {len(planted) - near} exact copies, {near} near-duplicates; truth in {truth}")


if __name__ == "__main__":
    main()
