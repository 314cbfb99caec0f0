"""Answer extraction, gold parsing and Math-Verify checks, including off-main-thread use."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ssb_trl.data.grading import extract_final_answer, grade, parse_gold_answer, verify_answer
from ssb_trl.data.sources import QAExample, QuestionSource, load_questions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"First \boxed{3}, then finally \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"So $x = \boxed{x^{2}+\sqrt{4}}$ done", r"x^{2}+\sqrt{4}"),
        (r"\fbox{12}", "12"),
        (r"The result is \boxed 7 indeed", "7"),
        ("<answer> 9 </answer>", "9"),
        ("Adding them up, the final answer is: $1,000$.", "1,000"),
        ("Answer: **7**", "7"),
        ("The answer is 42. That was easy.", "42"),
        ("We get 3, then 5, and at last 2/3", "2/3"),
        ("The answer is the thing we were looking for all along, then 12 apples", "12"),
        (r"\boxed{unbalanced and no number", None),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


def test_extract_without_fallbacks_needs_a_box() -> None:
    assert extract_final_answer("The answer is 42.", fallbacks=False) is None
    assert extract_final_answer(r"so \boxed{42}", fallbacks=False) == "42"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 1,234", "1234"),
        (r"Thus the area is $\boxed{\frac{3}{4}}$.", r"\frac{3}{4}"),
        ("  17 ", "17"),
        (12, "12"),
    ],
)
def test_parse_gold_answer(raw: str | int, expected: str) -> None:
    assert parse_gold_answer(raw) == expected


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("1,000", "1000"),
        ("$5", "5"),
        (r"\$5", "5"),
        ("18 dollars", "18"),
        (r"\text{10 apples}", "10"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", "0.5"),
        ("3.0", "3"),
        ("x = 2", "2"),
        ("1 + x^2", "x^2+1"),
        ("-40", "-40"),
    ],
)
def test_verify_accepts_equivalent_answers(predicted: str, gold: str) -> None:
    assert verify_answer(predicted, gold)


@pytest.mark.parametrize(("predicted", "gold"), [("3", "4"), ("40", "-40"), ("", "1"), (None, "1"), ("1,001", "1000")])
def test_verify_rejects_wrong_answers(predicted: str | None, gold: str) -> None:
    assert not verify_answer(predicted, gold)


def test_verify_is_safe_off_the_main_thread() -> None:
    # Math-Verify's default signal-based timeout raises outside the main thread; ours must not.
    cases = [("1,000", "1000", True), ("$5", "5", True), ("7", "8", False), (r"\frac{6}{4}", "1.5", True)] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: verify_answer(case[0], case[1]), cases))
    assert results == [expected for _, _, expected in cases]


def test_grade_with_math_verify() -> None:
    example = QAExample(id="q", question="How many?", answer="1000")
    assert grade(r"Step by step... so the total is \boxed{1,000}.", example)
    assert grade("Total: the answer is $1000.", example)
    assert not grade(r"\boxed{999}", example)
    assert not grade("I do not know.", example)


def test_grade_uses_the_reasoning_gym_scorer() -> None:
    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    examples = load_questions(
        QuestionSource("reasoning_gym:basic_arithmetic", task_config=one_digit, source_seed=3, num_questions=5)
    )
    for example in examples:
        assert example.scorer is not None
        assert grade(rf"Working it out: \boxed{{{example.answer}}}", example)
        assert not grade(rf"\boxed{{{int(example.answer) + 1}}}", example)
    # The scorer is authoritative: a garbled example (question no longer matches the task) is refused.
    broken = QAExample(id="x", question="something else", answer="1", scorer=examples[0].scorer)
    with pytest.raises(ValueError, match="no longer matches"):
        grade(r"\boxed{1}", broken)
