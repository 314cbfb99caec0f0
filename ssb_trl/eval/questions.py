"""The evaluation set: the config's QuestionSource, minus questions seen in training (and repeats), cut to `limit`."""

from __future__ import annotations

import logging
import os
from typing import Any

from ssb_trl.eval.config import EvalConfig
from ssb_trl.soft_labels.schema import PROMPT
from ssb_trl.storage import load_rows
from ssb_trl.tasks.sources import QAExample, load_questions

logger = logging.getLogger(__name__)


class EvaluationDataError(ValueError):
    """The evaluation set cannot be scored (unknown source, missing fields, no gold answers)."""


def normalise_question(text: Any) -> str:
    """The form two questions are compared in (training overlap, repeats): whitespace runs as one space."""
    return " ".join(str(text).split())


def _question_of_prompt(prompt: Any) -> str | None:
    """The question in a TRL prompt: a plain string, or the last user turn of conversational messages."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    return None


def training_questions(path: str | os.PathLike[str]) -> set[str]:
    """Whitespace-normalised questions of a training set (saved dataset dir or data file), for overlap removal."""
    try:
        rows = load_rows(os.fspath(path), split=None)
    except (ValueError, FileNotFoundError) as exc:
        raise EvaluationDataError(f"exclude_questions_from: cannot read {os.fspath(path)!r}: {exc}") from exc
    if "question" in rows.column_names:
        texts = rows.select_columns(["question"])["question"]
    elif PROMPT in rows.column_names:
        texts = [_question_of_prompt(x) for x in rows.select_columns([PROMPT])[PROMPT]]
    else:
        raise EvaluationDataError(
            f"exclude_questions_from: {os.fspath(path)!r} has neither a 'question' nor a 'prompt' column "
            f"(columns: {rows.column_names})."
        )
    return {normalise_question(t) for t in texts if t}


def _first_of_each_question(examples: list[QAExample]) -> list[QAExample]:
    """The examples in order, without later repeats of a (whitespace-normalised) question."""
    seen: set[str] = set()
    unique = []
    for ex in examples:
        key = normalise_question(ex.question)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    return unique


def load_eval_questions(config: EvalConfig) -> tuple[list[QAExample], dict[str, Any]]:
    """Load the evaluation questions and describe them (for results.json), failing with an
    `EvaluationDataError` that says how to fix the input."""
    source = config.describe()
    excluded: set[str] = set()
    for path in config.exclude_questions_from:
        excluded |= training_questions(path)
    counts: dict[str, Any] = {}
    try:
        examples = load_questions(config, report=counts)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        hint = ""
        if config.reasoning_gym_task is None:
            hint = (
                f" Each evaluation row needs a question in field {config.question_field!r} and a gold answer in "
                f"field {config.answer_field!r} (set question_field/answer_field to the right columns)."
            )
        raise EvaluationDataError(
            f"Cannot build the evaluation set for --dataset_name {config.dataset_name!r} ({source['description']}): {exc}.{hint}"
        ) from exc
    if config.exclude_questions_from:
        kept = [ex for ex in examples if normalise_question(ex.question) not in excluded]
        source["excluded_overlap"] = {
            "from": list(config.exclude_questions_from),
            "count": len(examples) - len(kept),
            "ids": [ex.id for ex in examples if normalise_question(ex.question) in excluded],
        }
        if not kept:
            raise EvaluationDataError(
                f"Every one of the {len(examples)} evaluation questions also appears in exclude_questions_from "
                f"{config.exclude_questions_from}: evaluate on other questions (another seed or split)."
            )
        if source["excluded_overlap"]["count"]:
            logger.warning(
                "Dropped %d evaluation question(s) that also appear in the training data",
                source["excluded_overlap"]["count"],
            )
        examples = kept
    if config.unique_questions:
        unique = _first_of_each_question(examples)
        source["duplicates_dropped"] = len(examples) - len(unique)
        examples = unique
    examples = examples[: config.limit] if config.limit else examples
    missing_gold = [ex.id for ex in examples if not str(ex.answer).strip()]
    if missing_gold:
        raise EvaluationDataError(
            f"{len(missing_gold)} of {len(examples)} evaluation questions have no gold answer (e.g. {missing_gold[:3]}); "
            "accuracy cannot be measured without one. Fill the answer field or point answer_field at the right column."
        )
    source.update(counts)
    source["evaluated"] = len(examples)
    return examples, source
