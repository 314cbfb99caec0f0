"""Shared inputs of the data-prep benchmarks: the bundled SmolLM2 and realistic SSB sequences.

Student rollouts on one-digit reasoning-gym arithmetic give the answers; each answer is paired with a
hinted teacher prompt (built from two other rollouts) and with the plain student prompt, exactly as the
pipeline pairs them, so the teacher and student distributions differ the way they do in SSB.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from ssb_trl.generation.sampling import Sampling
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer
from ssb_trl.tasks.prompts import chat_prompt_ids, student_messages, teacher_messages
from ssb_trl.tasks.sources import QuestionSource, load_questions

DEMO_TASK_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
"""reasoning-gym ``basic_arithmetic`` options of the demo (recipes/configs/demo_data.yaml): one digit, two terms."""

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class SSBSequences:
    teacher: list[list[int]]  # hinted prompt + answer
    teacher_starts: list[int]
    student: list[list[int]]  # student prompt + the same answer
    student_starts: list[int]
    answer_texts: list[str]


def load_bundled():
    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, device="cpu")
    return model, tokenizer


def questions(n: int, seed: int = 0):
    source = QuestionSource(
        "reasoning_gym:basic_arithmetic", task_config=DEMO_TASK_CONFIG, source_seed=seed, num_questions=n
    )
    return load_questions(source)


def make_sequences(model, tokenizer, num_questions: int, max_new_tokens: int, seed: int = 0) -> SSBSequences:
    """Three rollouts per question: two go into the hinted prompt, the third is the answer."""
    qs = questions(num_questions, seed)
    backend = TransformersBackend(model, tokenizer, max_batch_size=64)
    sampling = Sampling(temperature=0.8, top_k=50, max_new_tokens=max_new_tokens, n=3)
    rollouts = backend.generate([student_messages(q.question) for q in qs], sampling, seed=seed)
    eos = tokenizer.eos_token_id
    out = SSBSequences([], [], [], [], [])
    for q, (first, second, answer) in zip(qs, rollouts):
        answer_ids = answer.token_ids if answer.finished else [*answer.token_ids, eos]
        hinted = chat_prompt_ids(tokenizer, teacher_messages(q.question, first.text, second.text))
        plain = chat_prompt_ids(tokenizer, student_messages(q.question))
        out.teacher.append(hinted + answer_ids)
        out.teacher_starts.append(len(hinted))
        out.student.append(plain + answer_ids)
        out.student_starts.append(len(plain))
        out.answer_texts.append(answer.text)
    return out


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def write_results(name: str, markdown: str) -> None:
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown)
    print(f"\nwritten to {RESULTS / f'{name}.md'}")
