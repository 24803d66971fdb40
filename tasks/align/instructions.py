"""Instruction data: FLAN-style templated tasks from the curated splits, plus user-supplied items.

Every item is a chat prompt (one or more turns) and the assistant's response, in one style:
the answer only (a line, a letter, a name); the tokenizer's end-of-turn token follows it when
it is encoded. Task families, each with several prompt templates chosen per item by a
seeded draw (FLAN's recipe: one task, many phrasings):

- ``continue``: a passage's lines; the response is the next line;
- ``missing_line``: a passage with one line replaced by ``___``; the response is that line;
- ``next_passage``: a passage and lettered options (the true next line and lines of other
  passages of the same source); the response is the letter;
- ``work``: a passage and lettered titles (``meta.title``); the response is the letter;
- ``author``: a passage and the corpus's sources (shakespeare or milton); the response is the source.

Replay passages (``replay.jsonl``) are plain text of the train split, not instructions: SFT
trains on them in pretraining format so that it does not unlearn the corpus.

Training items come from the train split and never share a word n-gram with the eval stage's
held-out splits (its contamination check, run the other way round); held-out items come from
the validation split and, as the eval stage's items do, never share one with train.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ladder.artifacts import Artifact, Code, StageOutput, file_sha256, write_jsonl
from ladder.workspace import Workspace
from tasks.align.config import InstructionConfig
from tasks.data.dataset import Dataset
from tasks.data.document import Document, iter_split
from tasks.evals.contamination import NgramIndex, build_index, overlaps, train_index, word_count
from tasks.evals.suite import lines_of

STAGE = "instructions"
# Named module by module, not by package: SFT, preferences and DPO take this artifact's version as
# an input, so an edit to the trainers or to the eval gate must not make a new one and retrain them.
CODE = Code(
    ("tasks.align.instructions", "tasks.evals.suite", "tasks.evals.contamination", "tasks.data.document", "tasks.data.minhash"),
    ("numpy", "xxhash"),
)
TRAIN_JSONL = "train.jsonl"
HELDOUT_JSONL = "heldout.jsonl"
DROPPED_JSONL = "dropped.jsonl"
REPLAY_JSONL = "replay.jsonl"
REPLAY_TASK = "replay"
HELDOUT_SPLIT = "validation"
USER_TASK = "user"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MISSING = "___"

CONTAMINATED = "contaminated"
TOO_FEW_WORDS = "too_few_words"
TOO_FEW_DISTRACTORS = "too_few_distractors"
NO_TITLE = "no_title"
UNKNOWN_LABEL = "unknown_label"

TEMPLATES: dict[str, list[str]] = {
    "continue": [
        "Continue the passage with its next line.\n\n{context}",
        "{context}\n\nWhat is the next line?",
        "Here is the start of a passage:\n{context}\nWrite the line that follows.",
    ],
    "missing_line": [
        "One line of this passage is missing, marked ___. Write the missing line.\n\n{passage}",
        "{passage}\n\nWhich line belongs where ___ stands?",
        "Fill in the blank line (___):\n{passage}",
    ],
    "next_passage": [
        "Which line comes next?\n\n{context}\n\nOptions:\n{options}\nAnswer with the letter.",
        "{context}\n\nWhat follows? Choose one:\n{options}",
        "Read the passage and pick the line that continues it.\n{context}\n{options}",
    ],
    "work": [
        "Which work is this passage from?\n\n{passage}\n\nOptions:\n{options}\nAnswer with the letter.",
        "{passage}\n\nName the work (give the letter):\n{options}",
        "From which of these works is the passage below?\n{options}\n\n{passage}",
    ],
    "author": [
        "Who wrote this passage: {sources}?\n\n{passage}",
        "{passage}\n\nWhich author is this: {sources}?",
        "Attribute the passage to one of {sources}.\n{passage}",
    ],
}


@dataclass(frozen=True)
class Item:
    """One instruction example: the prompt's chat turns and the assistant's response."""

    id: str
    task: str
    template: int  # index into TEMPLATES[task]; -1 for user-supplied items
    messages: list[dict[str, str]]  # the prompt: chat turns, the last one the user's
    response: str
    origin: str  # the document id or "<file>:<line>" it came from

    @property
    def prompt(self) -> str:
        """The prompt's text (every turn's content), as a reader or a table shows it."""
        return "\n\n".join(m["content"] for m in self.messages)

    @property
    def check_text(self) -> str:
        """What the contamination check reads: every turn and the response."""
        return f"{self.prompt}\n{self.response}"

    @classmethod
    def from_json(cls, line: str) -> "Item":
        return cls(**json.loads(line))


@dataclass(frozen=True)
class Labels:
    """The answer sets fixed by the train split: its sources and titles, so held-out prompts list the same options."""

    sources: list[str]
    titles: list[str]

    @classmethod
    def of(cls, docs: Iterable[Document]) -> "Labels":
        docs = list(docs)
        titles = {str(d.meta["title"]) for d in docs if d.meta.get("title")}
        return cls(sorted({d.source for d in docs}), sorted(titles))


@dataclass
class Built:
    """Candidate items of one task family and the candidates dropped before any check, by reason."""

    items: list[Item] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)


def _template(task_name: str, rng: random.Random) -> tuple[int, str]:
    index = rng.randrange(len(TEMPLATES[task_name]))
    return index, TEMPLATES[task_name][index]


def _user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _options(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def _distinct_choices(rng: random.Random, pool: Sequence[str], gold: str, k: int) -> list[str] | None:
    """``k`` distinct entries of ``pool`` other than ``gold`` (case-insensitively), or None if there are not enough."""
    chosen: dict[str, str] = {}
    # Bounded tries: a pool dominated by the gold text must not loop forever.
    for _ in range(20 * k):
        if len(chosen) == k or not pool:
            break
        text = pool[rng.randrange(len(pool))]
        if text.casefold() != gold.casefold():
            chosen.setdefault(text.casefold(), text)
    return list(chosen.values()) if len(chosen) == k else None


def _lettered(rng: random.Random, gold: str, distractors: list[str]) -> tuple[str, str]:
    """Shuffled options as lettered lines, and the gold option's letter."""
    choices = [gold, *distractors]
    rng.shuffle(choices)
    return _options(choices), LETTERS[choices.index(gold)]


def _positions(candidates: list[int], cfg: InstructionConfig, rng: random.Random) -> list[int]:
    return sorted(rng.sample(candidates, min(cfg.items_per_document, len(candidates))))


def _long(line: str, cfg: InstructionConfig) -> bool:
    return len(line.split()) >= cfg.min_line_words


def _item(doc: Document, task_name: str, at: int, rng: random.Random, response: str, **fields: str) -> Item:
    index, template = _template(task_name, rng)
    return Item(f"{task_name}:{doc.id}@{at}", task_name, index, _user_turn(template.format(**fields)), response, doc.id)


def continue_items(docs: list[Document], cfg: InstructionConfig, labels: Labels, rng: random.Random) -> Built:
    """``continue``: the passage's lines up to a line; the response is that line."""
    built = Built()
    for doc in docs:
        lines = lines_of(doc.text)
        eligible = [i for i in range(cfg.context_lines, len(lines)) if _long(lines[i], cfg)]
        for i in _positions(eligible, cfg, rng):
            context = "\n".join(lines[i - cfg.context_lines : i])
            built.items.append(_item(doc, "continue", i, rng, lines[i], context=context))
    return built


def missing_line_items(docs: list[Document], cfg: InstructionConfig, labels: Labels, rng: random.Random) -> Built:
    """``missing_line``: a window of the passage with one line shown as ``___``; the response is that line."""
    before, after = (cfg.context_lines + 1) // 2, cfg.context_lines // 2
    built = Built()
    for doc in docs:
        lines = lines_of(doc.text)
        eligible = [i for i in range(before, len(lines) - after) if _long(lines[i], cfg)]
        for i in _positions(eligible, cfg, rng):
            passage = "\n".join([*lines[i - before : i], MISSING, *lines[i + 1 : i + 1 + after]])
            built.items.append(_item(doc, "missing_line", i, rng, lines[i], passage=passage))
    return built


@dataclass(frozen=True)
class _PoolWithout:
    """A source's pool of lines without one document's own block, read in place.

    A document's lines are one contiguous block of its source's pool, so skipping it is an
    index shift; copying the rest of the pool for every document made building the items
    quadratic in the corpus (23 s of the tiny profile's 80 s alignment).
    """

    lines: list[str]
    start: int
    count: int

    def __len__(self) -> int:
        return len(self.lines) - self.count

    def __getitem__(self, index: int) -> str:
        return self.lines[index if index < self.start else index + self.count]


def next_passage_items(docs: list[Document], cfg: InstructionConfig, labels: Labels, rng: random.Random) -> Built:
    """``next_passage``: the passage and lettered options, the true next line among lines of other passages of its source."""
    pools: dict[str, list[str]] = defaultdict(list)
    blocks: dict[str, tuple[int, int]] = {}  # document id -> (start, count) of its lines in its source's pool
    for doc in docs:
        own = [line for line in lines_of(doc.text) if _long(line, cfg)]
        blocks[doc.id] = (len(pools[doc.source]), len(own))
        pools[doc.source] += own
    built = Built()
    for doc in docs:
        lines = lines_of(doc.text)
        others = _PoolWithout(pools[doc.source], *blocks[doc.id])
        eligible = [i for i in range(cfg.context_lines, len(lines)) if _long(lines[i], cfg)]
        for i in _positions(eligible, cfg, rng):
            distractors = _distinct_choices(rng, others, lines[i], cfg.num_choices - 1)
            if distractors is None:
                built.drops[TOO_FEW_DISTRACTORS] += 1
                continue
            options, letter = _lettered(rng, lines[i], distractors)
            context = "\n".join(lines[i - cfg.context_lines : i])
            built.items.append(_item(doc, "next_passage", i, rng, letter, context=context, options=options))
    return built


def _windows(doc: Document, cfg: InstructionConfig, rng: random.Random) -> list[tuple[int, str]]:
    lines = lines_of(doc.text)
    starts = list(range(max(1, len(lines) - cfg.context_lines + 1)))
    return [(s, "\n".join(lines[s : s + cfg.context_lines])) for s in _positions(starts, cfg, rng)]


def work_items(docs: list[Document], cfg: InstructionConfig, labels: Labels, rng: random.Random) -> Built:
    """``work``: a passage and lettered titles (the train split's); the response is the true title's letter."""
    built = Built()
    k = min(cfg.num_choices, len(labels.titles)) - 1
    for doc in docs:
        title = doc.meta.get("title")
        if not title:
            built.drops[NO_TITLE] += 1
            continue
        if title not in labels.titles:
            built.drops[UNKNOWN_LABEL] += 1
            continue
        for at, passage in _windows(doc, cfg, rng):
            distractors = _distinct_choices(rng, labels.titles, title, k) if k >= 1 else None
            if distractors is None:
                built.drops[TOO_FEW_DISTRACTORS] += 1
                continue
            options, letter = _lettered(rng, title, distractors)
            built.items.append(_item(doc, "work", at, rng, letter, passage=passage, options=options))
    return built


def author_items(docs: list[Document], cfg: InstructionConfig, labels: Labels, rng: random.Random) -> Built:
    """``author``: a passage; the response is its source, one of the train split's sources listed in the prompt."""
    built = Built()
    if len(labels.sources) < 2:
        built.drops[TOO_FEW_DISTRACTORS] += len(docs)
        return built
    sources = ", ".join(labels.sources[:-1]) + f" or {labels.sources[-1]}"
    for doc in docs:
        if doc.source not in labels.sources:
            built.drops[UNKNOWN_LABEL] += 1
            continue
        for at, passage in _windows(doc, cfg, rng):
            built.items.append(_item(doc, "author", at, rng, doc.source, passage=passage, sources=sources))
    return built


def replay_items(docs: list[Document], cfg: InstructionConfig, rng: random.Random) -> list[Item]:
    """One window of ``replay_lines`` lines per document, as an item with no prompt: the passage is the whole text."""
    items = []
    for doc in docs:
        lines = lines_of(doc.text)
        start = rng.randrange(max(1, len(lines) - cfg.replay_lines + 1))
        passage = "\n".join(lines[start : start + cfg.replay_lines])
        if passage:
            items.append(Item(f"{REPLAY_TASK}:{doc.id}@{start}", REPLAY_TASK, -1, [], passage, doc.id))
    return items


BUILDERS: dict[str, Callable[[list[Document], InstructionConfig, Labels, random.Random], Built]] = {
    "continue": continue_items,
    "missing_line": missing_line_items,
    "next_passage": next_passage_items,
    "work": work_items,
    "author": author_items,
}


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise ValueError(f"{where}: every message needs a string 'role' and 'content', got {turn!r}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def parse_user_item(record: Any, where: str) -> Item:
    """One user-supplied record, ``{prompt, response}`` or ``{messages}`` ending with the assistant's turn."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with prompt/response or messages, got {type(record).__name__}")
    if "messages" in record:
        turns = _messages(record["messages"], where)
        if turns[-1]["role"] != "assistant" or len(turns) < 2:
            raise ValueError(f"{where}: a chat item must end with the assistant's turn (the response) after a prompt turn")
        prompt, response = turns[:-1], turns[-1]["content"]
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        prompt, response = _user_turn(record["prompt"]), record["response"]
    else:
        raise ValueError(f"{where}: expected string 'prompt' and 'response' fields, or 'messages'; got keys {sorted(record)}")
    if not response.strip() or not any(t["content"].strip() for t in prompt):
        raise ValueError(f"{where}: the prompt and the response must not be empty")
    return Item(f"{USER_TASK}:{where}", USER_TASK, -1, prompt, response.strip(), where)


def load_user_items(path: Path) -> list[Item]:
    """Every item of one user JSONL file; a bad line is an error naming the file and line."""
    if not path.is_file():
        raise ValueError(f"instruction file {path} does not exist: fix align.instructions.user_files")
    items = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON ({err.msg}): one JSON object per line") from None
            items.append(parse_user_item(record, where))
    return items


def user_file_versions(cfg: InstructionConfig) -> dict[str, str]:
    """``user:<path> -> sha256`` of each user file: a stage input, so an edited file rebuilds the instructions."""
    versions = {}
    for name in cfg.user_files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"instruction file {path} does not exist: fix align.instructions.user_files")
        versions[f"user:{path.resolve()}"] = file_sha256(path)
    return versions


@dataclass
class Screened:
    """Items that passed the check (up to the budget) and what became of the rest."""

    kept: list[Item]
    unused: int  # passed, but beyond the budget
    unchecked_short: int  # kept although too short to hold one n-gram


def screen(
    items: list[Item], index: NgramIndex, rng: random.Random, budget: int, drops: Counter,
    dropped: list[dict[str, Any]], split: str, require_checkable: bool,
) -> Screened:
    """Shuffle, drop items sharing a word n-gram with ``index`` (into ``drops`` and ``dropped``), keep ``budget``.

    ``require_checkable`` also drops items too short to hold one n-gram (a clean result
    means nothing for them): the eval stage's rule for held-out items. Training items that
    short are kept and counted, since they cannot carry an eval item's n-gram either.
    """
    order = list(items)
    rng.shuffle(order)
    hits = overlaps(index, [item.check_text for item in order])
    passed: list[tuple[Item, bool]] = []  # (item, too short to check)
    for item, hit in zip(order, hits, strict=True):
        short = word_count(item.check_text) < index.n
        reason = CONTAMINATED if hit else TOO_FEW_WORDS if short and require_checkable else None
        if reason is None:
            passed.append((item, short))
            continue
        drops[reason] += 1
        dropped.append({"split": split, "reason": reason, "ngram_hits": int(hit), **asdict(item)})
    kept = passed[:budget]
    return Screened([item for item, _ in kept], len(passed) - len(kept), sum(short for _, short in kept))


def build_instruction_files(
    data_dir: Path, cfg: InstructionConfig, eval_splits: list[str], ngram: int, out: Path, index_batch_docs: int = 512
) -> StageOutput:
    """Write ``train.jsonl``, ``heldout.jsonl`` and ``dropped.jsonl`` (every dropped item with its reason) to ``out``."""
    train_docs = list(iter_split(data_dir, "train"))
    heldout_docs = list(iter_split(data_dir, HELDOUT_SPLIT))
    if not train_docs or not heldout_docs:
        raise ValueError(
            f"the curated train or {HELDOUT_SPLIT} split under {data_dir} is empty: instruction items need both; "
            f"run `ladder data` on a larger corpus or raise data.split.validation_fraction"
        )
    labels = Labels.of(train_docs)
    eval_index = build_index(
        (d.text for split in sorted(set(eval_splits)) for d in iter_split(data_dir, split)), ngram, index_batch_docs
    )
    heldout_index = train_index(data_dir, ngram, index_batch_docs)
    train, heldout, dropped = [], [], []
    counts: dict[str, Any] = {"labels": asdict(labels), "train": {}, "heldout": {}}
    for task_name in cfg.tasks:
        for split, docs, index, budget, checkable, kept in (
            ("train", train_docs, eval_index, cfg.items_per_task, False, train),
            ("heldout", heldout_docs, heldout_index, cfg.heldout_items_per_task, True, heldout),
        ):
            rng = random.Random(f"{cfg.seed}:{split}:{task_name}")
            built = BUILDERS[task_name](docs, cfg, labels, rng)
            screened = screen(built.items, index, rng, budget, built.drops, dropped, split, checkable)
            kept += screened.kept
            counts[split][task_name] = {
                "candidates": len(built.items), "kept": len(screened.kept), "unused": screened.unused,
                "unchecked_short": screened.unchecked_short, "dropped": dict(sorted(built.drops.items())),
            }
    replay_drops: Counter = Counter()
    rng = random.Random(f"{cfg.seed}:replay")
    replay = screen(replay_items(train_docs, cfg, rng), eval_index, rng, cfg.replay_passages, replay_drops, dropped, "replay", False)
    counts["replay"] = {"kept": len(replay.kept), "unused": replay.unused, "dropped": dict(sorted(replay_drops.items()))}
    user_drops: Counter = Counter()
    user_kept = user_short = 0
    for name in cfg.user_files:
        items = load_user_items(Path(name))
        screened = screen(items, eval_index, random.Random(f"{cfg.seed}:user:{name}"), len(items), user_drops, dropped, "train", False)
        train += screened.kept
        user_kept, user_short = user_kept + len(screened.kept), user_short + screened.unchecked_short
    if cfg.user_files:
        counts["train"][USER_TASK] = {"kept": user_kept, "unchecked_short": user_short, "dropped": dict(sorted(user_drops.items()))}
    if not train or not heldout:
        raise ValueError(
            f"no {'training' if not train else 'held-out'} instruction items survived ({counts}): "
            f"lower align.instructions.min_line_words / context_lines or add data"
        )
    for name, kept in ((TRAIN_JSONL, train), (HELDOUT_JSONL, heldout), (REPLAY_JSONL, replay.kept)):
        write_jsonl(out / name, map(asdict, kept))
    write_jsonl(out / DROPPED_JSONL, dropped)
    contaminated = sum(1 for d in dropped if d["reason"] == CONTAMINATED)
    metrics = {"train_items": len(train), "heldout_items": len(heldout), "replay_passages": len(replay.kept),
               "contaminated_items": contaminated}
    return StageOutput(counts=counts, metrics=metrics)


@dataclass(frozen=True)
class InstructionSet:
    """A built instruction dataset: the artifact and its items."""

    artifact: Artifact

    @property
    def version(self) -> str:
        return self.artifact.version

    def items(self, split: str) -> list[Item]:
        """``train`` or ``heldout`` items in their stored order."""
        name = {"train": TRAIN_JSONL, "heldout": HELDOUT_JSONL}[split]
        return [Item.from_json(line) for line in self.artifact.file(name).read_text(encoding="utf-8").splitlines()]

    def replay(self) -> list[str]:
        """The replay passages' texts, in their stored order."""
        lines = self.artifact.file(REPLAY_JSONL).read_text(encoding="utf-8").splitlines()
        return [Item.from_json(line).response for line in lines]


@task(name="build-instructions", cache_policy=NO_CACHE)
def build_instructions(
    ws: Workspace, cfg: InstructionConfig, dataset: Dataset, eval_splits: list[str], ngram: int
) -> InstructionSet:
    """The instruction items of this dataset version and config (built once, then a cache hit).

    ``eval_splits`` and ``ngram`` are the eval stage's (``evals.suite``): its held-out splits
    and its contamination n-gram length, so both stages apply one check.
    """
    store = ws.store()
    inputs = {"dataset": dataset.md5, "eval_splits": ",".join(sorted(set(eval_splits))), "ngram": str(ngram),
              **user_file_versions(cfg)}
    artifact, _ = store.run_stage(
        STAGE, cfg, inputs, lambda out: build_instruction_files(dataset.path, cfg, eval_splits, ngram, out), code=CODE
    )
    return InstructionSet(artifact)
