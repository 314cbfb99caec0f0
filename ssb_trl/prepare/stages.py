"""The stages of SSB data preparation before its soft labels (docs/METHOD.md steps 1-5), pure functions:
rollouts -> pair (or hint) -> hinted teacher -> hint check.

Each stage takes questions and the previous stage's records and returns new records (plain JSON-able dicts, so
the job can persist them). They read no file and write none; :mod:`ssb_trl.prepare.job` decides what runs where.
Every random draw is seeded from ``(seed, question id, stage, attempt)``, so a stage's output for a question does
not depend on which other questions share its call.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

from ssb_trl.generation.base import GenerationBackend
from ssb_trl.generation.sampling import derive_seed
from ssb_trl.prepare.config import PrepConfig
from ssb_trl.tasks.grading import extract_final_answer, grade, normalize_answer
from ssb_trl.tasks.prompts import student_messages
from ssb_trl.tasks.sources import QAExample


def run_rollouts(backend: GenerationBackend, questions: list[QAExample], config: PrepConfig) -> list[dict[str, Any]]:
    """Steps 1-2: ``num_rollouts`` student samples per question, each graded."""
    prompts = [student_messages(q.question, config.system_prompt) for q in questions]
    seeds = [derive_seed(config.seed, q.id, "rollouts") for q in questions]
    completions = backend.generate(prompts, config.rollout_sampling, seed=seeds)
    records = []
    for question, samples in zip(questions, completions):
        rollouts = []
        for sample in samples:
            answer = extract_final_answer(sample.text, fallbacks=config.answer_fallbacks)
            correct = answer is not None and grade(sample.text, question, fallbacks=config.answer_fallbacks)
            rollouts.append(
                {
                    "text": sample.text,
                    "token_ids": sample.token_ids,
                    "num_tokens": len(sample.token_ids),
                    "finished": sample.finished,
                    "answer": answer,
                    "correct": correct,
                }
            )
        records.append({"id": question.id, "rollouts": rollouts})
    return records


def choose_pair(rollouts: list[dict[str, Any]], rng: random.Random) -> tuple[int, int] | None:
    """Step 3: (correct index, incorrect index), or None without both kinds.

    The incorrect rollout carries the most common wrong answer when that answer occurs more than once
    (ties: the answer seen first), else it is a random wrong one. Rollouts with no extractable answer
    are never the incorrect example.
    """
    correct = [i for i, r in enumerate(rollouts) if r["correct"]]
    wrong = [i for i, r in enumerate(rollouts) if not r["correct"] and r["answer"] is not None]
    if not correct or not wrong:
        return None
    correct_index = rng.choice(correct)
    counts = Counter(normalize_answer(rollouts[i]["answer"]) for i in wrong)
    top_answer, top_count = max(counts.items(), key=lambda item: item[1])  # max keeps the first of equal counts
    if top_count > 1:
        incorrect_index = next(i for i in wrong if normalize_answer(rollouts[i]["answer"]) == top_answer)
    else:
        incorrect_index = rng.choice(wrong)
    return correct_index, incorrect_index


def choose_hint(rollouts: list[dict[str, Any]], rng: random.Random, config: PrepConfig) -> dict[str, Any] | None:
    """Which rollouts the hinted teacher is shown for one question, or None when it is not asked about it.

    SSB asks only about questions with a right and a wrong rollout (:func:`choose_pair`), whatever the hint
    shows, so every hint format is compared on the same questions. With ``teacher_unpaired_questions`` a hint
    that needs no wrong attempt also serves the other questions it can: ``correct_solution`` those with a correct
    rollout, ``answer_only`` all of them (the gold answer is known: STaR's rationalisation).
    """
    pair = choose_pair(rollouts, rng)
    if pair is not None:
        correct_index, incorrect_index = pair
        return {
            "correct_index": correct_index,
            "incorrect_index": incorrect_index,
            "incorrect_answer": rollouts[incorrect_index]["answer"],
        }
    hint = config.hint_format
    if not config.teacher_unpaired_questions or hint.needs_incorrect:
        return None
    correct = [i for i, r in enumerate(rollouts) if r["correct"]]
    if hint.needs_correct and not correct:
        return None
    return {"correct_index": rng.choice(correct) if hint.needs_correct else None, "incorrect_index": None}


def is_pair(hint: dict[str, Any] | None) -> bool:
    """A question with both a right and a wrong rollout (SSB's selection), as recorded by :func:`choose_hint`."""
    return hint is not None and hint.get("correct_index") is not None and hint.get("incorrect_index") is not None


def teacher_prompt(
    question: QAExample, rollouts: list[dict[str, Any]], hint: dict[str, Any], config: PrepConfig
) -> list[dict[str, Any]]:
    def text(index: int | None) -> str | None:
        return None if index is None else rollouts[index]["text"]

    return config.hint_format.messages(
        question.question,
        correct=text(hint.get("correct_index")),
        incorrect=text(hint.get("incorrect_index")),
        answer=question.answer,
        system_prompt=config.system_prompt,
    )


def run_teacher(
    backend: GenerationBackend,
    questions: list[QAExample],
    rollout_records: list[dict[str, Any]],
    config: PrepConfig,
) -> list[dict[str, Any]]:
    """Steps 3-5: choose what each question's hint shows, ask the hinted teacher, keep the first verified-correct answer.

    An attempt counts only if it finished its turn (a cut answer would teach the student not to stop)
    and grades correct. There are ``1 + teacher_retries`` attempts per question asked: all sampled at once
    (``teacher_attempts_in_parallel``, best on batch hardware) or one round at a time for the questions
    still without a kept answer (least compute). The record's ``pair`` holds what the hint showed (None: not asked).
    """
    records: list[dict[str, Any]] = []
    pending: list[int] = []
    for index, (question, record) in enumerate(zip(questions, rollout_records)):
        hint = choose_hint(record["rollouts"], random.Random(derive_seed(config.seed, question.id, "pair")), config)
        records.append({"id": question.id, "pair": hint, "attempts": [], "kept_attempt": None})
        if hint is not None:
            pending.append(index)
    sampling = config.teacher_sampling
    one_each = dataclasses.replace(sampling, n=1)
    rounds = [(0, sampling)] if config.teacher_attempts_in_parallel else [(a, one_each) for a in range(sampling.n)]
    for first_attempt, round_sampling in rounds:
        if not pending:
            break
        prompts = [
            teacher_prompt(questions[i], rollout_records[i]["rollouts"], records[i]["pair"], config) for i in pending
        ]
        seeds = [derive_seed(config.seed, questions[i].id, "teacher", first_attempt) for i in pending]
        outputs = backend.generate(prompts, round_sampling, seed=seeds)
        for i, samples in zip(pending, outputs):
            for sample in samples:
                correct = sample.finished and grade(sample.text, questions[i], fallbacks=config.answer_fallbacks)
                if correct and records[i]["kept_attempt"] is None:
                    records[i]["kept_attempt"] = len(records[i]["attempts"])
                records[i]["attempts"].append(
                    {
                        "text": sample.text,
                        "token_ids": sample.token_ids,
                        "finished": sample.finished,
                        "answer": extract_final_answer(sample.text, fallbacks=config.answer_fallbacks),
                        "correct": correct,
                    }
                )
        pending = [i for i in pending if records[i]["kept_attempt"] is None]
    return records


def run_hint_check(
    backend: GenerationBackend,
    questions: list[QAExample],
    teacher_records: list[dict[str, Any]],
    config: PrepConfig,
) -> list[dict[str, Any]]:
    """The hint's gain, unhinted half: ``hint_check_samples`` fresh answers to the bare question, with the
    teacher's sampling settings, for every question the teacher was asked about (see :mod:`ssb_trl.prepare.hint_gain`).

    Seeded per question (stage label "unhinted-check"), apart from the teacher's own draws.
    """
    asked = [i for i, record in enumerate(teacher_records) if record["pair"] is not None]
    records = [{"id": question.id, "unhinted": None} for question in questions]
    if not asked or config.hint_check_samples == 0:
        return records
    sampling = dataclasses.replace(config.teacher_sampling, n=config.hint_check_samples)
    prompts = [student_messages(questions[i].question, config.system_prompt) for i in asked]
    seeds = [derive_seed(config.seed, questions[i].id, "unhinted-check") for i in asked]
    outputs = backend.generate(prompts, sampling, seed=seeds)
    for i, samples in zip(asked, outputs):
        records[i]["unhinted"] = [
            {
                "num_tokens": len(sample.token_ids),
                "finished": sample.finished,
                "answer": extract_final_answer(sample.text, fallbacks=config.answer_fallbacks),
                "correct": sample.finished and grade(sample.text, questions[i], fallbacks=config.answer_fallbacks),
            }
            for sample in samples
        ]
    return records
