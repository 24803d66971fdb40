"""The eval suite: lm-eval task YAMLs over items ladder builds from the held-out splits.

The task templates live in ``tasks/evals/lm_eval_tasks/``; building the suite fills them in
with the paths of the item files it writes, so the suite artifact is a plain lm-eval include
path (``--include_path <artifact>/lm_eval_tasks``). Tasks:

- ``ladder_ppl_<source>``: held-out documents of one source, scored whole
  (``loglikelihood_rolling``: word and byte perplexity, bits per byte);
- ``ladder_next_line``: which of the options is the passage's next line (multiple choice);
- ``ladder_last_word``: which of the options is the line's last word (multiple choice);
- ``ladder_last_word_gen``: write the line's last word (generation, exact match);

and for the last three a few-shot variant ``<task>_<k>shot``. The zero-shot cloze tasks score
every item of their family; the few-shot variants and the generation task, which cost more
per item and which the release policy does not gate by default, score its first
``variant_items``. Items are drawn with a seeded
RNG from the scored split, few-shot examples from the other held-out split. Every candidate
item is checked against the train split's n-gram index first, and against the prompt budget
(``max_prompt_chars``: with its few-shot examples, no prompt may overflow the model's context,
or lm-eval would cut it from the left); an item is dropped, counted and written to
``dropped.jsonl`` with its reason, never lost silently.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Artifact, Code, StageOutput, stage_version, write_jsonl
from ladder.config import content_hash
from ladder.workspace import Workspace
from tasks.data.dataset import Dataset
from tasks.data.document import Document, iter_split
from tasks.evals.config import SuiteConfig
from tasks.evals.contamination import NgramIndex, overlaps, train_index, word_count

STAGE = "evals"
# Named module by module, the templates being an input: a registered model records the suite
# version it was judged on, so an edit to the gate, registry or runner must not make a new one.
# The files are written for this lm_eval's task format; xxhash hashes the contamination n-grams.
CODE = Code(
    ("tasks.evals.suite", "tasks.evals.contamination", "tasks.data.document", "tasks.data.minhash"),
    ("lm_eval", "numpy", "xxhash"),
)
TEMPLATES = Path(__file__).parent / "lm_eval_tasks"
TASKS_DIR = "lm_eval_tasks"
ITEMS_DIR = "items"
SUITE_JSON = "suite.json"
DROPPED = "dropped.jsonl"

PPL = "ladder_ppl"  # pooled over sources; ladder_ppl_<source> per source
SUITE_TAG_ALL = "ladder_suite"  # the lm-eval tag every task of the suite carries: `--tasks ladder_suite`

CONTAMINATED = "contaminated"
TOO_FEW_WORDS = "too_few_words"
TOO_FEW_DISTRACTORS = "too_few_distractors"
TOO_LONG = "too_long"
# lm-eval's default separator between few-shot examples, counted in a prompt's length.
FEWSHOT_DELIMITER = "\n\n"

# A last word worth asking for: letters, possibly joined by an apostrophe or hyphen (o'er, well-met).
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_EDGE_PUNCTUATION = "\"'’‘“”.,;:!?()[]{}-—_*"


@dataclass(frozen=True)
class Candidate:
    """An eval item before the checks: its record, the text the contamination check reads, and its prompt length.

    ``prompt_chars`` is the longest text lm-eval scores for it (context, delimiter and the
    longest option), or None for a document scored whole in rolling windows, which never overflows.
    """

    record: dict[str, Any]
    check_text: str
    prompt_chars: int | None = None


@dataclass(frozen=True)
class Suite:
    """A built eval suite: where lm-eval finds it, what it scores, and what was dropped."""

    artifact: Artifact
    tasks: list[str]
    metrics: list[str]  # "<task>/<metric>", ladder_ppl pooled included
    higher_is_better: dict[str, bool]

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def include_path(self) -> Path:
        return self.path / TASKS_DIR

    @property
    def counts(self) -> dict[str, Any]:
        return self.artifact.counts

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> "Suite":
        info = json.loads(artifact.file(SUITE_JSON).read_text())
        return cls(artifact, info["tasks"], info["metrics"], info["higher_is_better"])


def lines_of(text: str) -> list[str]:
    """The passage's non-blank lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_last_word(line: str) -> tuple[str, str] | None:
    """``(line before its last word, the word without edge punctuation)``, or None if the word is not one."""
    head, _, last = line.rstrip().rpartition(" ")
    word = last.strip(_EDGE_PUNCTUATION)
    if not head.strip() or len(word) < 3 or not _WORD.fullmatch(word):
        return None
    return head.rstrip(), word


def task_token(source: str) -> str:
    """A source name as it appears in a task name: lowercase letters, digits and underscores."""
    token = re.sub(r"[^0-9a-z]+", "_", source.casefold()).strip("_")
    if not token:
        raise ValueError(f"source {source!r} has no letters or digits to name its perplexity task: rename the source")
    return token


def _positions(lines: list[str], cfg: SuiteConfig, rng: random.Random, usable: Callable[[str], bool]) -> list[int]:
    eligible = [i for i in range(cfg.context_lines, len(lines)) if usable(lines[i])]
    return sorted(rng.sample(eligible, min(cfg.items_per_document, len(eligible))))


def _long_enough(line: str, cfg: SuiteConfig) -> bool:
    return len(line.split()) >= cfg.min_line_words


def _distractors(rng: random.Random, pool: list[tuple[str, str]], doc_id: str, gold: str, k: int) -> list[str] | None:
    """``k`` distinct options from other documents, none equal to the gold one (case-insensitively)."""
    chosen: dict[str, str] = {}
    # Bounded tries: a pool dominated by the gold text must not loop forever.
    for _ in range(20 * k):
        if len(chosen) == k or not pool:
            break
        owner, text = pool[rng.randrange(len(pool))]
        key = text.casefold()
        if owner != doc_id and key != gold.casefold() and key not in chosen:
            chosen[key] = text
    return list(chosen.values()) if len(chosen) == k else None


def _multiple_choice(rng: random.Random, gold: str, distractors: list[str]) -> tuple[list[str], int]:
    options = [gold, *distractors]
    rng.shuffle(options)
    return options, options.index(gold)


def next_line_candidates(docs: list[Document], cfg: SuiteConfig, rng: random.Random) -> tuple[list[Candidate], Counter]:
    """Next-line cloze items: context lines, the true next line among lines of other passages of the source."""
    pools: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for doc in docs:
        pools[doc.source] += [(doc.id, line) for line in lines_of(doc.text) if _long_enough(line, cfg)]
    items, drops = [], Counter()
    for doc in docs:
        lines = lines_of(doc.text)
        for i in _positions(lines, cfg, rng, lambda line: _long_enough(line, cfg)):
            context, gold = "\n".join(lines[i - cfg.context_lines : i]), lines[i]
            distractors = _distractors(rng, pools[doc.source], doc.id, gold, cfg.num_choices - 1)
            if distractors is None:
                drops[TOO_FEW_DISTRACTORS] += 1
                continue
            choices, index = _multiple_choice(rng, gold, distractors)
            record = {"id": f"{doc.id}@{i}", "source": doc.source, "context": context, "choices": choices, "gold": index}
            items.append(Candidate(record, f"{context}\n{gold}", _prompt_chars(context, choices)))
    return items, drops


def last_word_candidates(docs: list[Document], cfg: SuiteConfig, rng: random.Random) -> tuple[list[Candidate], Counter]:
    """Last-word items: the passage up to a line's last word; options are last words of other lines of the source.

    Each record serves both the multiple-choice task (``choices``, ``gold``) and the
    generation task (``answer``).
    """
    pools: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for doc in docs:
        for line in lines_of(doc.text):
            split = split_last_word(line)
            if split is not None:
                pools[doc.source].append((doc.id, split[1]))

    def usable(line: str) -> bool:
        return _long_enough(line, cfg) and split_last_word(line) is not None

    items, drops = [], Counter()
    for doc in docs:
        lines = lines_of(doc.text)
        for i in _positions(lines, cfg, rng, usable):
            head, answer = split_last_word(lines[i])  # type: ignore[misc]
            distractors = _distractors(rng, pools[doc.source], doc.id, answer, cfg.num_choices - 1)
            if distractors is None:
                drops[TOO_FEW_DISTRACTORS] += 1
                continue
            context = "\n".join([*lines[i - cfg.context_lines : i], head])
            choices, index = _multiple_choice(rng, answer, distractors)
            record = {
                "id": f"{doc.id}@{i}", "source": doc.source, "context": context,
                "choices": choices, "gold": index, "answer": answer,
            }
            items.append(Candidate(record, f"{context} {answer}", _prompt_chars(context, choices)))
    return items, drops


def _prompt_chars(context: str, choices: list[str]) -> int:
    # The task templates put one delimiter character between context and option.
    return len(context) + 1 + max(map(len, choices))


def document_candidates(docs: list[Document]) -> dict[str, list[Candidate]]:
    """Perplexity items per source: whole documents."""
    by_source: dict[str, list[Candidate]] = defaultdict(list)
    for doc in docs:
        by_source[doc.source].append(Candidate({"id": doc.id, "source": doc.source, "text": doc.text}, doc.text))
    return dict(sorted(by_source.items()))


# Item family -> how its items are built, and the tasks (name, template) that score them.
FAMILIES: dict[str, tuple[Callable[..., tuple[list[Candidate], Counter]], list[tuple[str, str]]]] = {
    "ladder_next_line": (next_line_candidates, [("ladder_next_line", "next_line.yaml")]),
    "ladder_last_word": (
        last_word_candidates,
        [("ladder_last_word", "last_word.yaml"), ("ladder_last_word_gen", "last_word_gen.yaml")],
    ),
}


def select(
    candidates: list[Candidate], budget: int | None, index: NgramIndex, rng: random.Random, drops: Counter,
    dropped: list[dict[str, Any]], task_name: str, max_chars: int | None = None,
) -> list[Candidate]:
    """Shuffle, drop what is too short to check, shares an n-gram with train or is longer than ``max_chars``; keep ``budget`` items.

    ``budget`` None keeps every clean item. ``drops`` and ``dropped`` receive every dropped
    item and its reason; items beyond the budget are counted as ``unused`` by the caller, not dropped.
    """
    order = list(candidates)
    rng.shuffle(order)
    hits = overlaps(index, [c.check_text for c in order])
    kept = []
    for candidate, hit in zip(order, hits, strict=True):
        reason = None
        if word_count(candidate.check_text) < index.n:
            reason = TOO_FEW_WORDS
        elif hit:
            reason = CONTAMINATED
        elif max_chars is not None and candidate.prompt_chars is not None and candidate.prompt_chars > max_chars:
            reason = TOO_LONG
        if reason is None:
            kept.append(candidate)
            continue
        drops[reason] += 1
        dropped.append({"task": task_name, "reason": reason, "train_ngram_hits": int(hit), **candidate.record})
    return kept[:budget]


def _render(template: str, **fields: Any) -> str:
    # JSON strings are YAML strings: a path with spaces or colons stays one scalar.
    quoted = {k: json.dumps(str(v)) if isinstance(v, Path) else v for k, v in fields.items()}
    return Template((TEMPLATES / template).read_text()).substitute(**quoted)


def _task_metrics(rendered: str) -> dict[str, bool]:
    """metric -> higher_is_better, as the rendered task YAML declares them."""
    spec = yaml.safe_load(rendered)
    return {m["metric"]: bool(m["higher_is_better"]) for m in spec["metric_list"]}


def _counts(checked: int, drops: Counter, kept: int) -> dict[str, Any]:
    """Counts of one task's items: every candidate is dropped (by reason), kept, or unused (over budget)."""
    checked_drops = drops[TOO_FEW_WORDS] + drops[CONTAMINATED] + drops[TOO_LONG]
    return {
        "candidates": checked + drops[TOO_FEW_DISTRACTORS],
        "dropped": dict(sorted(drops.items())),
        "unused": checked - checked_drops - kept,
        "kept": kept,
    }


def build_suite_files(data_dir: Path, cfg: SuiteConfig, out: Path, final: Path) -> StageOutput:
    """Write items, few-shot pools and rendered task YAMLs to ``out``; YAML paths point into ``final``.

    ``final`` is where the artifact will live once complete (the stage contract renames
    ``out`` into it), so the include path works from there.
    """
    index = train_index(data_dir, cfg.ngram, cfg.index_batch_docs)
    scored = list(iter_split(data_dir, cfg.eval_split))
    shots = list(iter_split(data_dir, cfg.fewshot_split))
    if not scored:
        raise ValueError(
            f"the {cfg.eval_split} split under {data_dir} is empty: there is nothing held out to evaluate on; "
            f"raise data.split.test_fraction / validation_fraction and rerun `ladder data`"
        )
    tasks: dict[str, str] = {}  # task name -> rendered YAML
    counts: dict[str, Any] = {"train_documents": index.documents, "train_ngrams": len(index), "tasks": {}}
    dropped: list[dict[str, Any]] = []

    for source, candidates in document_candidates(scored).items():
        name = f"{PPL}_{task_token(source)}"
        if name in tasks:
            raise ValueError(f"sources map to the same task name {name!r}: rename one of them")
        drops: Counter = Counter()
        kept = [c.record for c in select(
            candidates, cfg.ppl_docs_per_source, index, random.Random(f"{cfg.seed}:{name}"), drops, dropped, name
        )]
        if not kept:
            raise ValueError(f"every {cfg.eval_split} document of source {source!r} was dropped ({dict(drops)}): see {DROPPED}")
        write_jsonl(out / ITEMS_DIR / f"{name}.jsonl", kept)
        tasks[name] = _render("perplexity.yaml", task=name, test_file=final / ITEMS_DIR / f"{name}.jsonl")
        counts["tasks"][name] = _counts(len(candidates), drops, len(kept))

    for family, (build, scored_by) in FAMILIES.items():
        rng = random.Random(f"{cfg.seed}:{family}")
        items, drops = build(scored, cfg, rng)
        shot_items, shot_drops = build(shots, cfg, rng)
        # The prompt of a k-shot item is k examples and the item, so the pool holds the shortest
        # clean examples and an item gets what the k longest of them leave: no prompt can overflow.
        clean_shots = select(shot_items, None, index, rng, shot_drops, dropped, f"{family}:fewshot",
                             cfg.max_prompt_chars // (cfg.num_fewshot + 1))
        pool = sorted(clean_shots, key=lambda c: c.prompt_chars or 0)[: cfg.fewshot_pool]
        longest = sorted((c.prompt_chars or 0 for c in pool), reverse=True)[: cfg.num_fewshot]
        item_chars = cfg.max_prompt_chars - sum(longest) - cfg.num_fewshot * len(FEWSHOT_DELIMITER)
        kept = select(items, cfg.items_per_task, index, rng, drops, dropped, family, item_chars)
        if not kept or len(pool) < cfg.num_fewshot:
            raise ValueError(
                f"{family}: {len(kept)} items and {len(pool)} few-shot examples survived the checks "
                f"({dict(drops)}, few-shot {dict(shot_drops)}); need at least 1 and {cfg.num_fewshot}: "
                f"lower evals.suite.min_line_words / context_lines / num_fewshot, raise max_prompt_chars "
                f"if the model's context allows, or hold out more data"
            )
        test_file, fewshot_file = final / ITEMS_DIR / f"{family}.jsonl", final / ITEMS_DIR / f"{family}.fewshot.jsonl"
        variant_file = final / ITEMS_DIR / f"{family}.variants.jsonl"
        write_jsonl(out / ITEMS_DIR / test_file.name, [c.record for c in kept])
        write_jsonl(out / ITEMS_DIR / variant_file.name, [c.record for c in kept[: cfg.variant_items]])
        write_jsonl(out / ITEMS_DIR / fewshot_file.name, [c.record for c in pool])
        counts["tasks"][family] = _counts(len(items), drops, len(kept))
        counts["tasks"][f"{family}:fewshot"] = _counts(len(shot_items), shot_drops, len(pool))
        for position, (task_name, template) in enumerate(scored_by):
            for shots_k, name in ((0, task_name), (cfg.num_fewshot, f"{task_name}_{cfg.num_fewshot}shot")):
                # The family's first task, zero-shot, scores every item; its variants the first variant_items.
                scored_file = test_file if (position, shots_k) == (0, 0) else variant_file
                tasks[name] = _render(
                    template, task=name, test_file=scored_file, fewshot_file=fewshot_file,
                    num_fewshot=shots_k, max_gen_toks=cfg.max_gen_toks,
                )

    higher_is_better: dict[str, bool] = {}
    for name, rendered in tasks.items():
        (out / TASKS_DIR).mkdir(parents=True, exist_ok=True)
        (out / TASKS_DIR / f"{name}.yaml").write_text(rendered)
        for metric, better in _task_metrics(rendered).items():
            higher_is_better[f"{name}/{metric}"] = better
            if name.startswith(f"{PPL}_"):
                higher_is_better[f"{PPL}/{metric}"] = better
    write_jsonl(out / DROPPED, dropped)
    info = {"tasks": sorted(tasks), "metrics": sorted(higher_is_better), "higher_is_better": higher_is_better}
    (out / SUITE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True))
    contaminated = sum(1 for d in dropped if d["reason"] == CONTAMINATED)
    return StageOutput(counts=counts, metrics={"contaminated_items": contaminated, "tasks": len(tasks)})


@task(name="build-eval-suite", cache_policy=NO_CACHE)
def build_suite(ws: Workspace, cfg: SuiteConfig, dataset: Dataset) -> Suite:
    """The eval suite of this dataset version and config (built once, then a cache hit)."""
    store = ws.store()
    # The templates are part of what the suite is: editing one must build a new version.
    templates = content_hash({path.name: path.read_text() for path in sorted(TEMPLATES.glob("*.yaml"))})
    inputs = {"dataset": dataset.md5, "templates": templates}
    final = store.path(STAGE, stage_version(STAGE, cfg, inputs, CODE))
    artifact, _ = store.run_stage(
        STAGE, cfg, inputs, lambda out: build_suite_files(dataset.path, cfg, out, final), code=CODE
    )
    return Suite.from_artifact(artifact)
