"""Student and hinted-teacher prompts (METHOD.md steps 1 and 4), versioned.

The wording is ours. Any change to the text of these prompts must bump :data:`PROMPT_TEMPLATE_VERSION`:
the version is recorded in every soft-label dataset, because soft labels taken under one prompt do not
transfer to another.
"""

from __future__ import annotations

from typing import Any

PROMPT_TEMPLATE_VERSION = "ssb-prompts-v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are a skilled math tutor. Work through the problem one step at a time, explaining each step, "
    "and finish with the final answer written inside \\boxed{}."
)

TEACHER_INSTRUCTIONS = """Below is a problem together with two answers written by students. An automatic checker, \
which compared only the final boxed answers, found that the first answer is right and the second one is wrong.

Problem:
{question}

Answer judged correct:
{correct}

Answer judged incorrect:
{incorrect}

Now write your own solution to the problem. Reason clearly, one step at a time, and point out the mistakes \
a student could easily make along the way so the reader learns to avoid them. Write it as a fresh, \
self-contained solution: do not say or hint that you were shown other answers. End with the final answer \
inside \\boxed{{}}; it must agree with the answer judged correct."""


Messages = list[dict[str, Any]]


def _with_system(system_prompt: str | None, user_content: str) -> Messages:
    messages: Messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_content})
    return messages


def student_messages(question: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> Messages:
    """Chat messages the student sees: the system prompt and the bare question (no hints).

    Pass ``system_prompt=None`` for models whose chat template has no system role.
    """
    return _with_system(system_prompt, question.strip())


def teacher_messages(
    question: str,
    correct_answer_text: str,
    incorrect_answer_text: str,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Messages:
    """Chat messages for the hinted teacher: the problem, one correct and one incorrect student answer."""
    content = TEACHER_INSTRUCTIONS.format(
        question=question.strip(), correct=correct_answer_text.strip(), incorrect=incorrect_answer_text.strip()
    )
    return _with_system(system_prompt, content)


def chat_prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template, ready for the assistant's turn.

    The template already contains any special tokens it wants, so nothing else is added.
    """
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(token) for token in ids]
