"""Student and hinted-teacher prompts, and their chat-templated token ids with the real SmolLM2 tokenizer."""

from __future__ import annotations

from ssb_trl.tasks.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    PROMPT_TEMPLATE_VERSION,
    chat_prompt_ids,
    student_messages,
    teacher_messages,
)

QUESTION = "What is {2 + 3} times 4?"


def test_student_messages() -> None:
    messages = student_messages(f"  {QUESTION}\n")
    assert messages == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": QUESTION},
    ]
    assert "\\boxed{}" in DEFAULT_SYSTEM_PROMPT
    assert student_messages(QUESTION, system_prompt=None) == [{"role": "user", "content": QUESTION}]


def test_teacher_messages_carry_both_answers_and_the_rules() -> None:
    correct, incorrect = r"5 * 4 = \boxed{20}", r"2 + 3 * 4 = \boxed{14}"
    messages = teacher_messages(QUESTION, correct, incorrect)
    assert messages[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    user = messages[1]["content"]
    assert messages[1]["role"] == "user"
    # Question (braces intact), the correct answer before the incorrect one, each labelled.
    assert user.index(QUESTION) < user.index(correct) < user.index(incorrect)
    assert "judged correct" in user and "judged incorrect" in user
    assert "only the final boxed answers" in user
    assert "do not say or hint that you were shown other answers" in user
    assert user.rstrip().endswith("it must agree with the answer judged correct.")
    assert "\\boxed{}" in user and "{{" not in user
    assert PROMPT_TEMPLATE_VERSION.startswith("ssb-prompts-v")


def test_chat_prompt_ids_use_the_template(tokenizer) -> None:
    ids = chat_prompt_ids(tokenizer, student_messages(QUESTION))
    assert all(isinstance(i, int) for i in ids)
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT)
    assert text.endswith("<|im_start|>user\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
    teacher_ids = chat_prompt_ids(tokenizer, teacher_messages(QUESTION, "a", "b"))
    assert len(teacher_ids) > len(ids)
