"""Where questions come from: :class:`QuestionSource` (Hub dataset, local file or folder, reasoning-gym task).

Data preparation and evaluation both describe their questions with the same dataclass (their configs
extend it), so the two read the same fields, parse the task options once, and grade alike (one
``answer_fallbacks`` setting). Every source becomes a list of :class:`QAExample` with a stable ``id``
(the pipeline seeds generation and resumes work by id) and a gold ``answer`` string. ``source`` is:

- ``"reasoning_gym:<task>"`` (or ``"rg:<task>"``): a reasoning-gym task generated offline from
  ``task_config``/``source_seed``/``num_questions``; each example keeps a pointer to the task's own scorer;
- a path to a ``.jsonl``/``.json``/``.parquet``/``.csv`` file or to a dataset folder;
- a benchmark preset (:data:`BENCHMARK_PRESETS`: gsm8k, math500, aime2024, ...), which fills the Hub
  name, config, split and fields that were left unset;
- anything else: a Hub dataset name, loaded with ``datasets.load_dataset(name, config_name, split=...)``.

Gold answers pass through :func:`ssb_trl.tasks.grading.parse_gold_answer`, so GSM8K's ``... #### 42`` and
MATH-style solutions ending in ``\\boxed{...}`` work as answer fields directly.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ssb_trl.storage import hub_offline, load_rows
from ssb_trl.tasks.grading import check_gold_answers, parse_gold_answer
from ssb_trl.validation import require_valid_numbers

logger = logging.getLogger(__name__)

REASONING_GYM_PREFIXES = ("reasoning_gym:", "rg:")
DEFAULT_MAX_QUESTION_CHARS = 20_000
"""Longest question kept by default (about 5,000 tokens of English); longer ones are skipped, never cut."""


@dataclass(frozen=True)
class BenchmarkPreset:
    """Where a public benchmark lives on the Hub and which columns hold the question and the gold answer."""

    name: str
    dataset_name: str
    dataset_config: str | None
    split: str
    question_field: str
    answer_field: str
    description: str


# Names and fields checked against the dataset cards; they need Hub access, so they are untested offline here.
BENCHMARK_PRESETS: dict[str, BenchmarkPreset] = {
    "gsm8k": BenchmarkPreset(
        "gsm8k", "openai/gsm8k", "main", "test", "question", "answer", "GSM8K test (1,319); gold after '####'"
    ),
    "math500": BenchmarkPreset(
        "math500", "HuggingFaceH4/MATH-500", None, "test", "problem", "answer", "MATH-500 test (500 problems)"
    ),
    "aime2024": BenchmarkPreset(
        "aime2024", "HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "AIME 2024 I+II (30 problems)"
    ),
    "aime2024_maxwell": BenchmarkPreset(
        "aime2024_maxwell",
        "Maxwell-Jia/AIME_2024",
        None,
        "train",
        "Problem",
        "Answer",
        "AIME 2024 I+II (30 problems), Maxwell-Jia copy",
    ),
}


def parse_json_mapping(value: dict | str | None, name: str) -> dict | None:
    """A mapping given as a dict (YAML) or a JSON string (command line); '' and None mean none."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{name} must be a JSON object, e.g. '{{\"min_digits\": 1}}'; got {value!r} ({exc})"
            ) from exc
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object (a mapping), got {value!r}")
    return value


@dataclass
class QuestionSource:
    """Where questions come from and how their answers are graded (the fields are flags of both recipes)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Questions: a Hub dataset name, a .jsonl/.json/.parquet/.csv file or a dataset folder, "
            f"'reasoning_gym:<task>', or a benchmark preset ({', '.join(BENCHMARK_PRESETS)})."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. 'main'."})
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split to read (default: the preset's, else 'train'; a file is one split)."}
    )
    question_field: str | None = field(
        default=None, metadata={"help": "Column holding the question (default: the preset's, else 'question')."}
    )
    answer_field: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the gold answer (default: the preset's, else 'answer'); GSM8K '#### x' and "
            "'\\boxed{x}' are understood."
        },
    )
    id_field: str | None = field(default=None, metadata={"help": "Column with unique ids (default: split/row index)."})
    task_config: dict | str | None = field(
        default=None, metadata={"help": "reasoning-gym task options as a JSON object (a mapping in YAML)."}
    )
    source_seed: int = field(default=42, metadata={"help": "Seed that generates reasoning-gym questions."})
    num_questions: int | None = field(
        default=None,
        metadata={"help": "Use the first N questions (default: all). reasoning-gym tasks generate N (required)."},
    )
    answer_fallbacks: bool = field(
        default=True,
        metadata={
            "help": "Accept final answers without \\boxed{} ('answer is X', last number) when grading; small models "
            "rarely box. Data preparation and evaluation of this source grade alike."
        },
    )
    max_question_chars: int = field(
        default=DEFAULT_MAX_QUESTION_CHARS,
        metadata={
            "help": "Questions longer than this many characters are skipped (with a warning that counts them): "
            "they would not fit a prompt, and cutting a question changes it."
        },
    )

    def __post_init__(self) -> None:
        require_valid_numbers(self)  # every field of the config this source is part of, before any check
        self.task_config = parse_json_mapping(self.task_config, "task_config")
        preset = BENCHMARK_PRESETS.get(self.dataset_name or "")
        if preset is not None:
            self.dataset_config = self.dataset_config or preset.dataset_config
        self.dataset_split = self.dataset_split or (preset.split if preset else "train")
        self.question_field = self.question_field or (preset.question_field if preset else "question")
        self.answer_field = self.answer_field or (preset.answer_field if preset else "answer")
        if self.num_questions is not None and self.num_questions < 1:
            raise ValueError(f"num_questions must be >= 1 (or unset for all), got {self.num_questions}")
        if self.reasoning_gym_task is not None:
            _check_reasoning_gym_task(self.reasoning_gym_task)  # a wrong name first: num_questions would not help
            if self.num_questions is None:
                raise ValueError("a reasoning-gym source generates its questions: set num_questions")
        if self.max_question_chars < 1:
            raise ValueError(f"max_question_chars must be >= 1, got {self.max_question_chars}")

    @property
    def reasoning_gym_task(self) -> str | None:
        """The task name of a ``reasoning_gym:<task>`` source, else None."""
        for prefix in REASONING_GYM_PREFIXES:
            if (self.dataset_name or "").startswith(prefix):
                return self.dataset_name[len(prefix) :].strip()
        return None

    def settings(self) -> dict[str, Any]:
        """The source's own fields (also when it is part of a larger config), for records and fingerprints."""
        return {f.name: getattr(self, f.name) for f in fields(QuestionSource)}

    def describe(self) -> dict[str, Any]:
        """The settings plus what the source is (``kind``) and a one-line description for reports."""
        task, preset = self.reasoning_gym_task, BENCHMARK_PRESETS.get(self.dataset_name or "")
        path = Path(self.dataset_name or "").expanduser()
        if task is not None:
            kind, description = "reasoning-gym", f"reasoning-gym {task} (seed {self.source_seed})"
        elif preset is not None:
            kind = "benchmark preset"
            if self.dataset_split == preset.split:
                description = f"{preset.description}, Hub {preset.dataset_name} split {self.dataset_split}"
            else:  # the preset's description names its own split: do not claim it for another
                description = f"Hub {preset.dataset_name} split {self.dataset_split} (fields of preset {preset.name})"
        elif path.is_file():
            kind, description = "local file", f"local file {self.dataset_name}"
        elif path.is_dir():
            kind, description = "local folder", f"local folder {self.dataset_name} (split {self.dataset_split})"
        else:
            kind, description = "Hub dataset", f"Hub dataset {self.dataset_name} (split {self.dataset_split})"
        return {**self.settings(), "kind": kind, "description": description}


@dataclass
class QAExample:
    """One question with its gold answer; ``scorer`` points to a source-specific scorer when there is one."""

    id: str
    question: str
    answer: str
    scorer: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QAExample:
        return cls(id=str(data["id"]), question=data["question"], answer=data["answer"], scorer=data.get("scorer"))

    def score(self, predicted: str) -> float:
        """Score ``predicted`` with the example's own scorer (1.0 = correct)."""
        scorer = self.scorer or {}
        if scorer.get("type") != "reasoning_gym":
            raise ValueError(f"example {self.id!r} has an unknown scorer {scorer!r}; expected type 'reasoning_gym'")
        config_json = json.dumps(scorer.get("config") or {}, sort_keys=True)
        dataset = _reasoning_gym_dataset(scorer["task"], config_json, int(scorer["seed"]), int(scorer["size"]))
        entry = dataset[int(scorer["index"])]
        if entry["question"] != self.question:
            raise ValueError(
                f"example {self.id!r} no longer matches reasoning-gym task {scorer['task']!r} at index "
                f"{scorer['index']} (different reasoning-gym version?); regenerate the questions"
            )
        return float(dataset.score_answer(predicted, entry))


def _check_reasoning_gym_task(task: str) -> None:
    """Refuse a reasoning-gym task name that does not exist, listing some that do (a missing package is said
    when the questions are loaded)."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return
    if task not in DATASETS:
        close = sorted(name for name in DATASETS if task.split("_")[0] in name)[:10]
        raise ValueError(
            f"unknown reasoning-gym task {task!r}; examples of valid tasks: {close or sorted(DATASETS)[:10]} "
            f"({len(DATASETS)} tasks in total, see reasoning_gym.factory.DATASETS)"
        )


@functools.lru_cache(maxsize=32)
def _reasoning_gym_dataset(task: str, config_json: str, seed: int, size: int) -> Any:
    """Build (and cache) a reasoning-gym dataset; entries are generated deterministically from the seed."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError("reasoning-gym sources need the package: pip install reasoning-gym") from exc
    _check_reasoning_gym_task(task)
    config = json.loads(config_json)
    try:
        return reasoning_gym.create_dataset(task, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"invalid config for reasoning-gym task {task!r}: {config} ({exc})") from exc


def _load_reasoning_gym(task: str, task_config: dict[str, Any] | None, seed: int, size: int) -> list[QAExample]:
    config = dict(task_config or {})
    dataset = _reasoning_gym_dataset(task, json.dumps(config, sort_keys=True), seed, size)
    examples = []
    for index in range(len(dataset)):
        entry = dataset[index]
        scorer = {"type": "reasoning_gym", "task": task, "config": config, "seed": seed, "size": size, "index": index}
        examples.append(
            QAExample(
                id=f"{task}/{seed}/{index}", question=entry["question"], answer=str(entry["answer"]), scorer=scorer
            )
        )
    return examples


def _unknown_source_hint(source: str) -> str:
    """What a source name that loads nothing might have meant: a preset, a local file, reasoning-gym."""
    hint = (
        f" {source!r} is not a benchmark preset ({', '.join(BENCHMARK_PRESETS)}), nor an existing local file or "
        "folder; use a preset name, a Hub dataset id, 'reasoning_gym:<task>', or a local "
        ".jsonl/.json/.parquet/.csv file"
    )
    if hub_offline():
        hint += (
            " (offline: copy the dataset as a file, e.g. --dataset_name questions.jsonl --question_field problem "
            "--answer_field answer)"
        )
    return hint + "."


def _load_rows_as_examples(source: QuestionSource, report: dict[str, Any]) -> list[QAExample]:
    preset = BENCHMARK_PRESETS.get(source.dataset_name)
    location = preset.dataset_name if preset else source.dataset_name
    try:
        rows = load_rows(
            location,
            split=source.dataset_split,
            config_name=source.dataset_config,
            text_columns=[source.answer_field],
        )
    except ValueError as exc:
        if Path(location).expanduser().exists() or "has no split" in str(exc):
            raise
        if preset is not None:
            raise ValueError(
                f"{exc} Benchmark preset {preset.name!r} is the Hub dataset {preset.dataset_name!r}"
                + (
                    f"; offline, download it elsewhere and pass it as a local file: --dataset_name {preset.name}.jsonl "
                    f"--question_field {preset.question_field} --answer_field {preset.answer_field}"
                    if hub_offline()
                    else ""
                )
                + "."
            ) from exc
        raise ValueError(f"{exc}{_unknown_source_hint(location)}") from exc
    split_label = "train" if Path(location).expanduser().is_file() else source.dataset_split
    columns = list(rows.column_names)
    wanted = (source.question_field, source.answer_field, source.id_field)
    missing = [name for name in wanted if name and name not in columns]
    if missing:
        raise ValueError(
            f"source {source.dataset_name!r} has no field(s) {missing}; its columns are {columns}. "
            "Set question_field/answer_field (and id_field) to the right column names"
        )
    report["rows_available"] = len(rows)
    if source.num_questions is not None:
        rows = rows.select(range(min(source.num_questions, len(rows))))
    examples, skipped, too_long, longest = [], 0, 0, 0
    for index, row in enumerate(rows):
        question, raw_answer = row[source.question_field], row[source.answer_field]
        answer = parse_gold_answer(raw_answer) if raw_answer is not None else ""
        if not question or not str(question).strip() or not answer:
            skipped += 1
            continue
        if len(str(question)) > source.max_question_chars:
            too_long += 1
            longest = max(longest, len(str(question)))
            continue
        example_id = str(row[source.id_field]) if source.id_field else f"{split_label}/{index}"
        examples.append(QAExample(id=example_id, question=str(question), answer=answer))
    if skipped:
        logger.warning("Skipped %d rows of %s with an empty question or answer", skipped, source.dataset_name)
    if too_long:
        logger.warning(
            "Skipped %d of %d questions of %s longer than max_question_chars=%d characters (longest: %d); "
            "raise --max_question_chars to keep them",
            too_long,
            len(rows),
            source.dataset_name,
            source.max_question_chars,
            longest,
        )
    report.update(rows_read=len(rows), skipped_empty=skipped, skipped_too_long=too_long)
    check_gold_answers(examples, source.dataset_name)
    return examples


def load_questions(source: QuestionSource, report: dict[str, Any] | None = None) -> list[QAExample]:
    """Load the questions of ``source`` with their gold answers (see the module docstring for the forms).

    Raises with a clear message for an unknown source, missing fields, or a source that yields no usable
    example. ``report``, when given, receives the counts of rows read and skipped (empty, too long).
    """
    if not source.dataset_name:
        raise ValueError("no question source given; pass a Hub dataset name, a local file or 'reasoning_gym:<task>'")
    report = {} if report is None else report
    task = source.reasoning_gym_task
    if task is not None:
        examples = _load_reasoning_gym(task, source.task_config, source.source_seed, source.num_questions)
        report.update(rows_read=len(examples), skipped_empty=0, skipped_too_long=0)
    else:
        examples = _load_rows_as_examples(source, report)
    if not examples:
        raise ValueError(
            f"source {source.dataset_name!r} yielded no questions (empty split, every row lacks a question/answer, or "
            f"every question is longer than max_question_chars={source.max_question_chars})"
        )
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"source {source.dataset_name!r} has duplicate ids (id_field={source.id_field!r}); ids must be unique"
        )
    logger.info("Loaded %d questions from %s", len(examples), source.dataset_name)
    return examples
