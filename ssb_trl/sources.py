"""Where SSB questions come from: Hub datasets, local files, reasoning-gym tasks.

Every source becomes a list of :class:`QAExample` with a stable ``id`` (the pipeline seeds generation
and resumes work by id) and a gold ``answer`` string. Source strings:

- ``"reasoning_gym:<task>"`` (or ``"rg:<task>"``): a reasoning-gym task generated offline from
  ``task_config``/``seed``/``size``; each example keeps a pointer to the task's own scorer.
- a path to a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or a directory saved with
  ``Dataset.save_to_disk`` (or holding such files);
- anything else: a Hub dataset name, loaded with ``datasets.load_dataset(name, config_name, split=...)``.

Gold answers pass through :func:`ssb_trl.grading.parse_gold_answer`, so GSM8K's ``... #### 42`` and
MATH-style solutions ending in ``\\boxed{...}`` work as answer fields directly.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssb_trl.grading import check_gold_answers, parse_gold_answer

logger = logging.getLogger(__name__)

REASONING_GYM_PREFIXES = ("reasoning_gym:", "rg:")
LOCAL_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


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


def _reasoning_gym_task(source: str) -> str | None:
    for prefix in REASONING_GYM_PREFIXES:
        if source.startswith(prefix):
            return source[len(prefix) :].strip()
    return None


@functools.lru_cache(maxsize=32)
def _reasoning_gym_dataset(task: str, config_json: str, seed: int, size: int) -> Any:
    """Build (and cache) a reasoning-gym dataset; entries are generated deterministically from the seed."""
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError as exc:
        raise ImportError("reasoning-gym sources need the package: pip install reasoning-gym") from exc
    if task not in DATASETS:
        close = sorted(name for name in DATASETS if task.split("_")[0] in name)[:10]
        raise ValueError(
            f"unknown reasoning-gym task {task!r}; examples of valid tasks: {close or sorted(DATASETS)[:10]} "
            f"({len(DATASETS)} tasks in total, see reasoning_gym.factory.DATASETS)"
        )
    config = json.loads(config_json)
    try:
        return reasoning_gym.create_dataset(task, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"invalid config for reasoning-gym task {task!r}: {config} ({exc})") from exc


def _load_reasoning_gym(task: str, task_config: dict[str, Any] | None, seed: int, size: int) -> list[QAExample]:
    config = dict(task_config or {})
    config_json = json.dumps(config, sort_keys=True)
    dataset = _reasoning_gym_dataset(task, config_json, seed, size)
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


def score_with_source_scorer(predicted: str, example: QAExample) -> float:
    """Score ``predicted`` with the example's own scorer (1.0 = correct)."""
    scorer = example.scorer or {}
    if scorer.get("type") != "reasoning_gym":
        raise ValueError(f"example {example.id!r} has an unknown scorer {scorer!r}; expected type 'reasoning_gym'")
    config_json = json.dumps(scorer.get("config") or {}, sort_keys=True)
    dataset = _reasoning_gym_dataset(scorer["task"], config_json, int(scorer["seed"]), int(scorer["size"]))
    entry = dataset[int(scorer["index"])]
    if entry["question"] != example.question:
        raise ValueError(
            f"example {example.id!r} no longer matches reasoning-gym task {scorer['task']!r} at index "
            f"{scorer['index']} (different reasoning-gym version?); regenerate the questions"
        )
    return float(dataset.score_answer(predicted, entry))


def _load_rows(
    source: str, source_type: str, config_name: str | None, split: str, data_files: Any = None
) -> tuple[Any, str]:
    """Load a ``datasets.Dataset`` for a file, directory or Hub source; also return a label for ids."""
    import datasets

    path = Path(source).expanduser()
    looks_local = source_type == "file" or path.exists() or path.suffix.lower() in LOCAL_FILE_BUILDERS
    if looks_local:
        if not path.exists():
            raise FileNotFoundError(f"question file {source!r} does not exist")
        if path.is_file():
            builder = LOCAL_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(
                    f"unsupported question file type {path.suffix!r} for {source!r}; "
                    f"use one of {sorted(LOCAL_FILE_BUILDERS)}"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train"), "train"
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{source!r} has splits {list(loaded)}, not {split!r}; pass split=...")
                loaded = loaded[split]
            return loaded, split
        return datasets.load_dataset(str(path), config_name, split=split, data_files=data_files), split
    if source_type not in ("auto", "hub"):
        raise ValueError(f"unknown source_type {source_type!r}; use 'auto', 'hub', 'file' or 'reasoning_gym'")
    try:
        return datasets.load_dataset(source, config_name, split=split, data_files=data_files), split
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " Offline mode is on, so it must already be in the local cache." if offline else ""
        raise ValueError(
            f"could not load questions from {source!r} (config={config_name!r}, split={split!r}): {exc}. "
            "Expected a Hub dataset name, a local .jsonl/.json/.parquet/.csv file or a saved dataset "
            f"directory, or 'reasoning_gym:<task>'.{hint}"
        ) from exc


def load_questions(
    source: str,
    *,
    source_type: str = "auto",
    config_name: str | None = None,
    split: str = "train",
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    data_files: Any = None,
    task_config: dict[str, Any] | None = None,
    seed: int = 42,
    size: int | None = None,
    num_questions: int | None = None,
) -> list[QAExample]:
    """Load questions with gold answers from ``source`` (see the module docstring for accepted forms).

    ``size``/``seed``/``task_config`` apply to reasoning-gym tasks (``size`` defaults to ``num_questions``
    or 100); ``num_questions`` keeps the first N examples of any source. Raises with a clear message for
    an unknown source, missing fields, or a source that yields no usable example.
    """
    if not source:
        raise ValueError("no question source given; pass a Hub dataset name, a local file or 'reasoning_gym:<task>'")
    task = _reasoning_gym_task(source)
    if task is None and source_type == "reasoning_gym":
        task = source
    if task is not None:
        rg_size = size if size is not None else (num_questions or 100)
        examples = _load_reasoning_gym(task, task_config, seed, rg_size)
        label = source
    else:
        rows, split_label = _load_rows(source, source_type, config_name, split, data_files)
        columns = list(rows.column_names)
        missing = [name for name in (question_field, answer_field, id_field) if name and name not in columns]
        if missing:
            raise ValueError(
                f"source {source!r} has no field(s) {missing}; its columns are {columns}. "
                "Set question_field/answer_field (and id_field) to the right column names"
            )
        if num_questions is not None:
            rows = rows.select(range(min(num_questions, len(rows))))
        examples, skipped = [], 0
        for index, row in enumerate(rows):
            question, raw_answer = row[question_field], row[answer_field]
            answer = parse_gold_answer(raw_answer) if raw_answer is not None else ""
            if not question or not str(question).strip() or not answer:
                skipped += 1
                continue
            example_id = str(row[id_field]) if id_field else f"{split_label}/{index}"
            examples.append(QAExample(id=example_id, question=str(question), answer=answer))
        if skipped:
            logger.warning("Skipped %d rows of %s with an empty question or answer", skipped, source)
        check_gold_answers(examples, source)
        label = source
    if num_questions is not None:
        examples = examples[:num_questions]
    if not examples:
        raise ValueError(f"source {label!r} yielded no questions (empty split, or every row lacks a question/answer)")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"source {label!r} has duplicate ids (id_field={id_field!r}); ids must be unique")
    logger.info("Loaded %d questions from %s", len(examples), label)
    return examples
