"""Quality gate: per-document statistics, per-document rules, batch-level expectations (Great Expectations).

Each document gets the statistics in ``STAT_COLUMNS``. The per-document rules (``RULES``, in order)
quarantine a document with the reason of the first rule it fails; ``failed_rules`` in its stats lists
them all. Then Great Expectations validates the whole batch (the share of documents quarantined, the
documents and words that pass, unique ids) from one row of statistics per shard (``batch_frame``), so
the gate never holds a row per document of the corpus; the result names each expectation the batch
broke, and the stage raises ``QualityGateError`` once it has kept the gate's report. The results JSON
and the Data Docs HTML are written to ``report_dir``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.data.config import QualityConfig
from tasks.data.document import Document
from tasks.data.ingest import Quarantined

QUALITY_DIR = "quality"  # the gate's report (results JSON, Data Docs) within an artifact or a kept failed report
RESULTS_JSON = "results.json"
DATA_DOCS_INDEX = "gx/uncommitted/data_docs/local_site/index.html"

_BULLETS = ("•", "‣", "⁃", "◦", "▪", "▫", "●", "○", "·", "-", "*")
_ELLIPSES = ("...", "…")
_ELLIPSIS_RUN = re.compile(r"\.{3,}|…")
_DIGIT = re.compile(r"\d")
_SYMBOL = re.compile(r"[^\w\s]|_")  # neither letter, digit nor space
_LETTERLESS_WORD = re.compile(r"(?<!\S)(?:(?![^\W\d_])\S)+(?!\S)")  # a whitespace token without a letter
_PUNCT = string.punctuation + "“”‘’«»—–…"

STAT_COLUMNS = (
    "chars", "words", "lines", "mean_word_length", "alpha_ratio", "symbol_ratio", "symbol_word_ratio",
    "bullet_line_fraction", "ellipsis_line_fraction", "alpha_word_fraction", "duplicate_line_char_fraction",
)


class QualityGateError(ValueError):
    """The batch broke a batch-level expectation; the message names each one and where the gate's report is kept."""

    def __init__(self, failures: list[str], report: Path) -> None:
        self.failures, self.report = failures, report
        super().__init__(
            f"data quality gate failed: {'; '.join(failures)}. The gate's report (Data Docs, the documents "
            f"quarantined so far with their reasons, the counts by reason) is kept in {report}; "
            f"Data Docs: {report / QUALITY_DIR / DATA_DOCS_INDEX}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles a failed task's exception; the default would call __init__ with the message alone.
        return type(self), (self.failures, self.report)


@dataclass
class QualityResult:
    """Documents that passed (in input order), those quarantined, every document's statistics, the batch's verdict."""

    kept: list[Document]
    quarantined: list[Quarantined]
    stats: pd.DataFrame  # one row per document: id, source, STAT_COLUMNS, reason, failed_rules
    results: dict[str, Any]  # the Great Expectations validation result
    failures: list[str]  # each batch expectation broken, with what was observed; empty when the batch passes


def document_stats(text: str) -> dict[str, float]:
    """The statistics the rules read, Gopher's (Rae et al. 2021) among them."""
    words = text.split()
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    n_words, n_lines = max(len(words), 1), max(len(lines), 1)
    bare = [w.strip(_PUNCT) for w in words]
    bare = [w for w in bare if w]
    # Letters are counted as what is left, because finding the rare symbols and digits is much faster.
    non_space = max(sum(map(len, words)), 1)
    symbols, digits = len(_SYMBOL.findall(text)), len(_DIGIT.findall(text))
    seen: set[str] = set()
    duplicate_chars = 0
    for line in lines:
        if line in seen:
            duplicate_chars += len(line)
        seen.add(line)
    return {
        "chars": len(text),
        "words": len(words),
        "lines": len(lines),
        "mean_word_length": sum(map(len, bare)) / len(bare) if bare else 0.0,
        "alpha_ratio": (non_space - symbols - digits) / non_space,
        "symbol_ratio": symbols / non_space,
        "symbol_word_ratio": (text.count("#") + len(_ELLIPSIS_RUN.findall(text))) / n_words,
        "bullet_line_fraction": sum(line.startswith(_BULLETS) for line in lines) / n_lines,
        "ellipsis_line_fraction": sum(line.endswith(_ELLIPSES) for line in lines) / n_lines,
        "alpha_word_fraction": (len(words) - len(_LETTERLESS_WORD.findall(text))) / n_words,
        "duplicate_line_char_fraction": duplicate_chars / max(sum(map(len, lines)), 1),
    }


# reason -> rows failing it; checked in this order, the first failure is the document's reason.
RULES: dict[str, Callable[[pd.DataFrame, QualityConfig], pd.Series]] = {
    "too_few_words": lambda s, c: s.words < c.min_words,
    "too_many_words": lambda s, c: s.words > c.max_words,
    "mean_word_length": lambda s, c: (s.mean_word_length < c.min_mean_word_length)
    | (s.mean_word_length > c.max_mean_word_length),
    "symbol_word_ratio": lambda s, c: s.symbol_word_ratio > c.max_symbol_word_ratio,
    "bullet_lines": lambda s, c: s.bullet_line_fraction > c.max_bullet_line_fraction,
    "ellipsis_lines": lambda s, c: s.ellipsis_line_fraction > c.max_ellipsis_line_fraction,
    "alpha_words": lambda s, c: s.alpha_word_fraction < c.min_alpha_word_fraction,
    "alpha_ratio": lambda s, c: s.alpha_ratio < c.min_alpha_ratio,
    "symbol_ratio": lambda s, c: s.symbol_ratio > c.max_symbol_ratio,
    "duplicate_lines": lambda s, c: s.duplicate_line_char_fraction > c.max_duplicate_line_char_fraction,
}


def stats_frame(docs: list[Document]) -> pd.DataFrame:
    """One row of statistics per document, in input order."""
    rows = [{"id": d.id, "source": d.source, **document_stats(d.text)} for d in docs]
    return pd.DataFrame(rows, columns=["id", "source", *STAT_COLUMNS])


def apply_rules(stats: pd.DataFrame, cfg: QualityConfig) -> pd.DataFrame:
    """``stats`` with ``failed_rules`` (list), ``reason`` (first failure or None), ``kept`` and ``kept_words``."""
    failures = pd.DataFrame({reason: rule(stats, cfg) for reason, rule in RULES.items()}, index=stats.index)
    out = stats.copy()
    out["failed_rules"] = [[r for r in RULES if row[r]] for row in failures.to_dict("records")]
    out["reason"] = [rules[0] if rules else None for rules in out["failed_rules"]]
    out["quarantined"] = out["reason"].notna()
    out["kept"] = (~out["quarantined"]).astype(int)
    out["kept_words"] = out["words"] * out["kept"]
    return out


def batch_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per shard, from its documents' statistics (``apply_rules``): what the batch expectations read.

    ``quarantine_share`` is the shard's quarantined documents over the batch's documents, so the column
    sums to the batch's share; ``duplicate_ids`` counts the shard's ids met before, in it or in an
    earlier shard.
    """
    total = max(sum(len(f) for f in frames), 1)
    seen: set[str] = set()
    rows = []
    for index, frame in enumerate(frames):
        before = len(seen)
        seen.update(frame["id"])
        quarantined = int(frame["quarantined"].sum())
        rows.append({
            "shard": index,
            "documents": len(frame),
            "duplicate_ids": len(frame) - (len(seen) - before),
            "quarantine_share": quarantined / total,
            "kept": int(frame["kept"].sum()),
            "kept_words": int(frame["kept_words"].sum()),
        })
    return pd.DataFrame(rows, columns=["shard", "documents", "duplicate_ids", "quarantine_share", "kept", "kept_words"])


def batch_expectations(cfg: QualityConfig) -> list[Any]:
    """The batch-level expectations over ``batch_frame``'s rows; each names the config field that sets its bound."""
    import great_expectations as gx

    exp = gx.expectations
    return [
        exp.ExpectColumnSumToBeBetween(
            column="duplicate_ids", min_value=0, max_value=0, meta={"config": "document ids must be unique"}
        ),
        exp.ExpectColumnSumToBeBetween(
            column="quarantine_share", min_value=0, max_value=cfg.max_quarantine_share,
            meta={"config": "data.quality.max_quarantine_share"},
        ),
        exp.ExpectColumnSumToBeBetween(
            column="kept", min_value=cfg.min_kept_documents, meta={"config": "data.quality.min_kept_documents"}
        ),
        exp.ExpectColumnSumToBeBetween(
            column="kept_words", min_value=cfg.min_kept_words, meta={"config": "data.quality.min_kept_words"}
        ),
    ]


def validate_batch(per_shard: pd.DataFrame, cfg: QualityConfig, report_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Run the batch expectations on ``per_shard`` (``batch_frame``) in a file-mode GX context under ``report_dir``
    and build Data Docs.

    Returns the validation result as JSON and a description of each expectation that failed.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    report_dir.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(report_dir))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.variables.save()
    batch = (
        ctx.data_sources.add_pandas("documents")
        .add_dataframe_asset("document_stats")
        .add_batch_definition_whole_dataframe("batch")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name="data-quality"))
    for expectation in batch_expectations(cfg):
        suite.add_expectation(expectation)
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name="data-quality", data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name="data-quality",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
            result_format="SUMMARY",
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": per_shard})
    (result,) = run.run_results.values()
    results = result.to_json_dict()
    (report_dir / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return results, [_describe(r) for r in result.results if not r.success]


def _describe(r: Any) -> str:
    conf = r.expectation_config
    kwargs = {k: v for k, v in conf.kwargs.items() if k != "batch_id"}
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    observed = r.result.get("observed_value", r.result.get("unexpected_count"))
    observed = observed.item() if hasattr(observed, "item") else observed  # numpy scalar -> plain number
    if r.exception_info and r.exception_info.get("raised_exception"):
        observed = f"error {r.exception_info.get('exception_message')}"
    hint = (conf.meta or {}).get("config", "")
    return f"{conf.type}({args}) observed {observed}" + (f" [{hint}]" if hint else "")


def apply_quality_rules(docs: list[Document], cfg: QualityConfig) -> tuple[pd.DataFrame, list[Document], list[Quarantined]]:
    """Score every document and quarantine those failing a rule: ``(stats after apply_rules, kept, quarantined)``.

    Per document, so it runs shard by shard; the batch expectations (``validate_batch``) need every shard's stats.
    """
    frame = apply_rules(stats_frame(docs), cfg)
    kept, quarantined = [], []
    for doc, row in zip(docs, frame.to_dict("records"), strict=True):
        if not row["failed_rules"]:
            kept.append(doc)
        else:
            quarantined.append(
                Quarantined(doc.id, doc.source, row["reason"], detail=", ".join(row["failed_rules"]),
                            stats=row_stats(row))
            )
    return frame, kept, quarantined


def quality_gate(docs: list[Document], cfg: QualityConfig, report_dir: Path) -> QualityResult:
    """Score every document, quarantine those failing a rule, validate the batch (``failures`` says how it broke)."""
    frame, kept, quarantined = apply_quality_rules(docs, cfg)
    results, failures = validate_batch(batch_frame([frame]), cfg, report_dir)
    return QualityResult(kept, quarantined, frame, results, failures)


def row_stats(row: dict[str, Any]) -> dict[str, float]:
    """A document's statistics rounded for the quarantine manifest."""
    return {k: round(float(row[k]), 4) if isinstance(row[k], float) else int(row[k]) for k in STAT_COLUMNS}
