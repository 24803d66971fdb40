"""Comparison of candidate tokenizers and selection of one by the rule written in config.

Validation metrics are measured overall and per source; rare-token mass comes from the
training sample, because that is the token distribution the model will be trained on.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from tasks.data.document import Document, iter_split
from tasks.tokenizer.config import CandidateKind, Objective, TokenizerTrainingConfig
from tasks.tokenizer.train import candidate_name, load_encoder, train_candidate, training_texts

ALL_SOURCES = "*"

# The direction in which each objective is better.
MAXIMISED: dict[Objective, bool] = {
    "bytes_per_token": True,
    "vocab_utilisation": True,
    "encode_mb_per_s": True,
    "fertility": False,
    "rare_token_mass": False,
}

COLUMNS = [
    "candidate", "kind", "vocab_size", "source", "documents", "bytes", "tokens", "words",
    "fertility", "bytes_per_token", "round_trip_exact", "round_trip_failures", "vocab_utilisation",
    "rare_token_mass", "train_seconds", "encode_mb_per_s",
]


def training_counts(tokenizer: Tokenizer, texts: Iterable[str]) -> np.ndarray:
    """How often each token id occurs when ``texts`` are encoded (length: the vocabulary size)."""
    counts = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for text in texts:
        ids = tokenizer.encode(text).ids
        counts += np.bincount(ids, minlength=len(counts))
    return counts


def rare_token_mass(counts: np.ndarray, k: int) -> float:
    """Share of token occurrences that fall on tokens seen fewer than ``k`` times."""
    total = counts.sum()
    return float(counts[counts < k].sum() / total) if total else 0.0


@dataclass
class _SourceStats:
    vocab_size: int
    documents: int = 0
    bytes: int = 0
    tokens: int = 0
    words: int = 0
    round_trip_failures: int = 0
    used: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.used = np.zeros(self.vocab_size, dtype=bool)

    def add(self, text: str, ids: list[int], exact: bool) -> None:
        self.documents += 1
        self.bytes += len(text.encode("utf-8"))
        self.tokens += len(ids)
        self.words += len(text.split())
        self.round_trip_failures += not exact
        self.used[ids] = True

    def row(self, num_specials: int) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "words": self.words,
            "fertility": self.tokens / self.words if self.words else 0.0,
            "bytes_per_token": self.bytes / self.tokens if self.tokens else 0.0,
            "round_trip_exact": 1.0 - self.round_trip_failures / self.documents if self.documents else 1.0,
            "round_trip_failures": self.round_trip_failures,
            # Special tokens never occur in document text, so they are left out of both sides.
            "vocab_utilisation": int(self.used[num_specials:].sum()) / (self.vocab_size - num_specials),
        }


def validation_rows(tokenizer: Tokenizer, docs: Iterable[Document], num_specials: int) -> list[dict[str, Any]]:
    """Rows of validation metrics: overall (source ``*``, with encode throughput) then per source, sorted.

    Every document is decoded again and compared with its text, so a single lossy document shows.
    """
    vocab_size = tokenizer.get_vocab_size()
    overall = _SourceStats(vocab_size)
    by_source: dict[str, _SourceStats] = {}
    encode_seconds = 0.0
    for doc in docs:
        start = time.perf_counter()
        ids = tokenizer.encode(doc.text).ids
        encode_seconds += time.perf_counter() - start
        exact = tokenizer.decode(ids, skip_special_tokens=False) == doc.text
        overall.add(doc.text, ids, exact)
        by_source.setdefault(doc.source, _SourceStats(vocab_size)).add(doc.text, ids, exact)
    if overall.documents == 0:
        raise ValueError("the validation split has no documents: give the data stage a validation share > 0")
    first = {"source": ALL_SOURCES, **overall.row(num_specials)}
    first["encode_mb_per_s"] = overall.bytes / 1e6 / encode_seconds if encode_seconds else 0.0
    return [first] + [{"source": name, **by_source[name].row(num_specials)} for name in sorted(by_source)]


@dataclass(frozen=True)
class Selection:
    """The chosen candidate, the rule that chose it and why, in words."""

    chosen: str
    rule: str
    reason: str


def rule_text(cfg: TokenizerTrainingConfig) -> str:
    constraints = [f"rare_token_mass <= {cfg.max_rare_token_mass:g}"]
    if cfg.require_round_trip:
        constraints.insert(0, "round_trip_exact == 1")
    direction = "maximise" if MAXIMISED[cfg.objective] else "minimise"
    return (
        f"{direction} {cfg.objective} among candidates with {' and '.join(constraints)}; "
        "ties go to the smaller vocabulary"
    )


def _violations(row: dict[str, Any], cfg: TokenizerTrainingConfig) -> list[str]:
    found = []
    if cfg.require_round_trip and row["round_trip_failures"]:
        found.append(f"{row['round_trip_failures']} validation documents do not round-trip")
    if row["rare_token_mass"] > cfg.max_rare_token_mass:
        found.append(f"rare_token_mass {row['rare_token_mass']:.4f} > {cfg.max_rare_token_mass:g}")
    return found


def select(overall_rows: list[dict[str, Any]], cfg: TokenizerTrainingConfig) -> Selection:
    """Apply the rule to one overall row per candidate; ``ValueError`` when none is admissible."""
    rule = rule_text(cfg)
    excluded = {row["candidate"]: _violations(row, cfg) for row in overall_rows}
    admissible = [row for row in overall_rows if not excluded[row["candidate"]]]
    if not admissible:
        details = "; ".join(f"{name}: {', '.join(why)}" for name, why in excluded.items())
        raise ValueError(
            f"no tokenizer candidate satisfies the rule ({rule}): {details}. Relax "
            "tokenizer.max_rare_token_mass, or add candidates or smaller tokenizer.vocab_sizes"
        )
    sign = -1.0 if MAXIMISED[cfg.objective] else 1.0
    best = min(admissible, key=lambda row: (sign * row[cfg.objective], row["vocab_size"], row["candidate"]))
    reason = f"{best['candidate']} has the best {cfg.objective} ({best[cfg.objective]:.4f}) of {len(admissible)} admissible"
    rejected = [f"{name} ({', '.join(why)})" for name, why in excluded.items() if why]
    if rejected:
        reason += "; excluded: " + "; ".join(rejected)
    return Selection(best["candidate"], rule, reason)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)


def plot_rank_frequency(counts: dict[str, np.ndarray], path: Path) -> None:
    """Token frequency against rank, log-log, one line per candidate (training sample)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, candidate_counts in counts.items():
        freq = np.sort(candidate_counts[candidate_counts > 0])[::-1]
        ax.loglog(np.arange(1, len(freq) + 1), freq, label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("frequency in the training sample")
    ax.set_title("Token frequency against rank")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_candidate(
    kind: CandidateKind, vocab_size: int, data_dir: Path, rate: float, cfg: TokenizerTrainingConfig, path: Path
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Train one candidate on the stage's sample and save it at ``path``; its comparison rows (``COLUMNS``) on the
    validation split and its token counts on the training sample."""
    start = time.perf_counter()
    tokenizer = train_candidate(kind, vocab_size, training_texts(data_dir, rate), cfg)
    train_seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True)
    tokenizer.save(str(path))
    encoder = load_encoder(path)
    counts = training_counts(encoder, training_texts(data_dir, rate))
    rows = validation_rows(encoder, iter_split(data_dir, "validation"), len(cfg.special_tokens))
    rows[0]["rare_token_mass"] = rare_token_mass(counts, cfg.rare_k)
    rows[0]["train_seconds"] = train_seconds
    identity = {"candidate": candidate_name(kind, vocab_size), "kind": kind, "vocab_size": encoder.get_vocab_size()}
    return [{column: {**identity, **row}.get(column) for column in COLUMNS} for row in rows], counts
