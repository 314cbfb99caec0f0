"""The pure stages of data preparation (METHOD.md steps 1-6): rollouts -> pair -> teacher -> soft-label rows.

Each stage takes questions and the previous stage's records and returns new records (plain JSON-able
dicts, so the pipeline can persist them) or the rows of the dataset. They read no file and write none;
:mod:`ssb_trl.data.pipeline` decides what runs where and :mod:`ssb_trl.data.workdir` keeps the results.
Every random draw is seeded from ``(seed, question id, stage, attempt)``, so a stage's output for a
question does not depend on which other questions share its call.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import datasets

from ssb_trl.contract import (
    ANSWER,
    COMPLETION,
    COMPLETION_MASK,
    ID,
    INPUT_IDS,
    PROMPT,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    features,
)
from ssb_trl.data.config import PrepConfig
from ssb_trl.data.generation import GenerationBackend
from ssb_trl.data.grading import extract_final_answer, grade, normalize_answer
from ssb_trl.data.prompts import chat_prompt_ids, student_messages, teacher_messages
from ssb_trl.data.sampling import derive_seed
from ssb_trl.data.sources import QAExample
from ssb_trl.data.teacher import extract_topk_soft_labels


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


def _teacher_prompt(
    question: QAExample, rollouts: list[dict[str, Any]], pair: dict[str, Any], config: PrepConfig
) -> list[dict[str, Any]]:
    return teacher_messages(
        question.question,
        rollouts[pair["correct_index"]]["text"],
        rollouts[pair["incorrect_index"]]["text"],
        config.system_prompt,
    )


def run_teacher(
    backend: GenerationBackend,
    questions: list[QAExample],
    rollout_records: list[dict[str, Any]],
    config: PrepConfig,
) -> list[dict[str, Any]]:
    """Steps 3-5: pair each question, ask the hinted teacher, keep the first verified-correct answer.

    An attempt counts only if it finished its turn (a cut answer would teach the student not to stop)
    and grades correct. There are ``1 + teacher_retries`` attempts per pair: all sampled at once
    (``teacher_attempts_in_parallel``, best on batch hardware) or one round at a time for the pairs
    still without a kept answer (least compute).
    """
    records: list[dict[str, Any]] = []
    pending: list[int] = []
    for index, (question, record) in enumerate(zip(questions, rollout_records)):
        pair = choose_pair(record["rollouts"], random.Random(derive_seed(config.seed, question.id, "pair")))
        entry: dict[str, Any] = {"id": question.id, "pair": None, "attempts": [], "kept_attempt": None}
        if pair is not None:
            correct_index, incorrect_index = pair
            entry["pair"] = {
                "correct_index": correct_index,
                "incorrect_index": incorrect_index,
                "incorrect_answer": record["rollouts"][incorrect_index]["answer"],
            }
            pending.append(index)
        records.append(entry)
    sampling = config.teacher_sampling
    one_each = dataclasses.replace(sampling, n=1)
    rounds = [(0, sampling)] if config.teacher_attempts_in_parallel else [(a, one_each) for a in range(sampling.n)]
    for first_attempt, round_sampling in rounds:
        if not pending:
            break
        prompts = [
            _teacher_prompt(questions[i], rollout_records[i]["rollouts"], records[i]["pair"], config) for i in pending
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


def build_rows(
    model: Any,
    tokenizer: Any,
    questions: list[QAExample],
    rollout_records: list[dict[str, Any]],
    teacher_records: list[dict[str, Any]],
    config: PrepConfig,
    eos_id: int,
    show_progress: bool = True,
) -> datasets.Dataset:
    """Step 6: teacher-forced soft labels on [hinted prompt + answer]; student rows on [student prompt + answer]."""
    kept = [(q, r, t) for q, r, t in zip(questions, rollout_records, teacher_records) if t["kept_attempt"] is not None]
    sequences, starts, answers = [], [], []
    for question, rollout_record, teacher_record in kept:
        attempt = teacher_record["attempts"][teacher_record["kept_attempt"]]
        answer_ids = list(attempt["token_ids"])
        if not answer_ids or answer_ids[-1] != eos_id:
            answer_ids.append(eos_id)  # the student must learn to end its turn
        prompt_ids = chat_prompt_ids(
            tokenizer, _teacher_prompt(question, rollout_record["rollouts"], teacher_record["pair"], config)
        )
        sequences.append(prompt_ids + answer_ids)
        starts.append(len(prompt_ids))
        answers.append((attempt["text"], answer_ids))
    row_features = features(config.logprob_dtype)
    columns: dict[str, list[Any]] = {name: [] for name in row_features}
    if kept:
        labels = extract_topk_soft_labels(
            model,
            sequences,
            starts,
            top_k=config.soft_label_top_k,
            temperature=config.soft_label_temperature,
            batch_size=config.soft_label_batch_size,
            logprob_dtype=config.logprob_dtype,
            show_progress=show_progress,
        )
        for (question, _, _), (text, answer_ids), (top_ids, top_logprobs) in zip(kept, answers, labels):
            prompt = student_messages(question.question, config.system_prompt)
            prompt_ids = chat_prompt_ids(tokenizer, prompt)
            columns[ID].append(question.id)
            columns[ANSWER].append(question.answer)
            columns[PROMPT].append(prompt)
            columns[COMPLETION].append([{"role": "assistant", "content": text}])
            columns[INPUT_IDS].append(prompt_ids + answer_ids)
            columns[COMPLETION_MASK].append([0] * len(prompt_ids) + [1] * len(answer_ids))
            columns[TEACHER_TOPK_IDS].append(top_ids.tolist())
            columns[TEACHER_TOPK_LOGPROBS].append(top_logprobs.tolist())
    return datasets.Dataset.from_dict(columns, features=row_features)
