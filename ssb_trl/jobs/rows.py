"""The soft-label rows every job writes: the teacher's soft labels on [teacher prompt + completion], stored on
[student prompt + completion] in the format of :mod:`ssb_trl.soft_labels`.

One rule for how a completion ends (:func:`with_end_of_turn`), one for how its soft labels are taken, checked and
encoded (:func:`ssb_trl.soft_labels.teacher.extract_soft_labels`), and sampled draws seeded per row id, so a rerun,
a resumed run or a run on more processes writes the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from ssb_trl.generation.sampling import derive_seed
from ssb_trl.models import end_of_turn_token
from ssb_trl.soft_labels.schema import (
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
from ssb_trl.soft_labels.teacher import extract_soft_labels


def end_of_turn_id(tokenizer: Any) -> int:
    """The token a completion ends with: the chat template's end of turn, else the eos token."""
    token = end_of_turn_token(tokenizer)
    return token if token is not None else int(tokenizer.eos_token_id)


def with_end_of_turn(token_ids: list[int], end_of_turn: int, stop_ids: list[int] | tuple[int, ...] = ()) -> list[int]:
    """A completion's tokens ending with one stop token, so that the student learns to end its turn.

    Generated text keeps the stop token the engine stopped at (one of ``stop_ids``: the model's eos ids, which hold
    the template's end of turn); any other text (cut short, or given by a dataset) gets ``end_of_turn``."""
    ids = [int(i) for i in token_ids]
    return ids if ids and ids[-1] in {end_of_turn, *stop_ids} else [*ids, end_of_turn]


@dataclass
class TextToLabel:
    """One row to write: what is stored for people (messages), the tokens, and the teacher's own prompt tokens."""

    id: str
    answer: str
    prompt: list[dict[str, str]]
    completion: str
    student_prompt_ids: list[int]
    teacher_prompt_ids: list[int]
    completion_ids: list[int]


def soft_label_rows(
    model: Any, texts: list[TextToLabel], config: Any, show_progress: bool = False, scorer: Any = None
) -> datasets.Dataset:
    """The rows of one shard. ``config`` holds the soft-label settings (:class:`~ssb_trl.jobs.settings.
    SoftLabelSettings`) and the run's ``seed``; a non-finite or unstorable log-prob is refused naming its row.
    The soft labels come from ``scorer`` when one is given (a vLLM engine or server:
    :class:`~ssb_trl.generation.scoring.PromptLogprobScorer`), else from a teacher-forced pass of ``model``."""
    vocab_size = scorer.vocab_size if scorer is not None else model.get_output_embeddings().weight.shape[0]
    row_features = features(config.logprob_dtype, vocab_size=vocab_size, top_k=config.soft_label_entries)
    columns: dict[str, list[Any]] = {name: [] for name in row_features}
    if not texts:
        return datasets.Dataset.from_dict(columns, features=row_features)
    sampled = config.soft_label_mode == "sampled"
    sequences = [t.teacher_prompt_ids + t.completion_ids for t in texts]
    answer_starts = [len(t.teacher_prompt_ids) for t in texts]
    settings: dict[str, Any] = {
        "mode": config.soft_label_mode,
        "top_k": config.soft_label_top_k,
        "num_draws": config.soft_label_draws if sampled else None,
        "seeds": [derive_seed(config.seed, t.id, "soft_labels") for t in texts] if sampled else None,
        "temperature": config.soft_label_temperature,
        "batch_size": config.soft_label_batch_size,
        "logprob_dtype": config.logprob_dtype,
        "show_progress": show_progress,
        "row_ids": [t.id for t in texts],
    }
    if scorer is not None:
        labels = scorer.soft_labels(sequences, answer_starts, **settings)
    else:
        labels = extract_soft_labels(model, sequences, answer_starts, **settings)
    for text, (top_ids, top_logprobs) in zip(texts, labels):
        columns[ID].append(text.id)
        columns[ANSWER].append(text.answer)
        columns[PROMPT].append(text.prompt)
        columns[COMPLETION].append([{"role": "assistant", "content": text.completion}])
        columns[INPUT_IDS].append(text.student_prompt_ids + text.completion_ids)
        columns[COMPLETION_MASK].append([0] * len(text.student_prompt_ids) + [1] * len(text.completion_ids))
        columns[TEACHER_TOPK_IDS].append(top_ids.tolist())
        columns[TEACHER_TOPK_LOGPROBS].append(top_logprobs.tolist())
    return datasets.Dataset.from_dict(columns, features=row_features)
