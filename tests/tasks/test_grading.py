"""Answer extraction, gold parsing, the graded set of equivalent / near-miss answers, bounded time on\npathological inputs from any thread or process, and the unparsable-gold warning."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ssb_trl.tasks import verify_worker
from ssb_trl.tasks.grading import check_gold_answers, extract_final_answer, grade, parse_gold_answer, verify_answer
from ssb_trl.tasks.sources import QAExample, QuestionSource, load_questions


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
        (r"We get 7, so \boxed{\frac{1}{2}", None),
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


# The graded set: (completion, gold as stored in a dataset, why). Graded end to end with `grade` on the gold
# after `parse_gold_answer`, as the pipeline and evaluation do.
EQUIVALENT = [
    (r"so the total is \boxed{1,000}.", "1000", "thousands separator"),
    (r"so the total is \boxed{1000}.", "1,000", "thousands separator in the gold"),
    (r"\boxed{1{,}000}", "1000", "LaTeX thousands separator"),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", "dfrac"),
    (r"\boxed{\$18}", "18", "escaped dollar"),
    (r"\boxed{18.00}", "Janet makes 9 * 2 = 18 dollars.\n#### 18", "cents, GSM8K gold"),
    (r"so she has \boxed{1,234} clips", "48/2 = 24 clips...\n#### 1,234", "GSM8K gold with a separator"),
    ("The answer is 72.", "She sold 48+24 = 72 clips.\n#### 72", "answer phrase, GSM8K gold"),
    ("Answer: $1,000$", "1000", "answer phrase in math mode"),
    ("<answer>7</answer>", "7", "answer tag"),
    (r"\boxed{x = 3}", "3", "an assignment"),
    (r"\boxed{y = 2x + 1}", "2x+1", "an equation's right-hand side"),
    (r"First \boxed{2}, then I check again: \boxed{5}", "5", "the last of several boxes"),
    (r"\boxed{-7}", "-7", "negative"),
    (r"\boxed{-\frac{3}{4}}", "-0.75", "negative fraction / decimal"),
    (r"\boxed{0.5}", r"\frac{1}{2}", "decimal / fraction"),
    (r"\boxed{.5}", "0.5", "leading decimal point"),
    (r"\boxed{2.50}", "2.5", "trailing zero"),
    (r"\boxed{3.0}", "3", "integral decimal"),
    (r"\boxed{\frac{6}{4}}", "1.5", "unreduced fraction"),
    (r"\boxed{0.333333}", r"\frac{1}{3}", "decimal to six places"),
    (r"\boxed{50\%}", "50", "percent sign"),
    (r"\boxed{10\text{ cm}}", "10", "text unit"),
    (r"\boxed{5\,\text{km}}", "5", "spaced text unit"),
    (r"\boxed{18 \text{ dollars}}", "18", "unit word"),
    (r"\boxed{12 apples}", "12", "plain unit word"),
    (r"\boxed{5^\circ}", "5", "degrees"),
    (r"\boxed{1 + x^2}", "x^2+1", "reordered expression"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", "LaTeX spelling"),
    (r"\boxed{2\pi}", r"2 \pi", "spacing"),
    (r"\boxed{(3, -1)}", "(3,-1)", "tuple"),
    (r"\boxed{[2, 5)}", "[2,5)", "interval"),
    (r"\boxed{\text{(C)}}", "C", "multiple-choice letter"),
    (r"\boxed{18 \div 2}", "9", "an expression with the gold's value"),
]
NEAR_MISSES = [
    (r"\boxed{2 \times 5}", "5", "extra factor"),
    (r"\boxed{2 \cdot 5}", "2", "extra factor"),
    (r"\boxed{5x}", "5", "variable"),
    (r"\boxed{5t}", "5", "variable Math-Verify takes for a unit (tonnes)"),
    (r"\boxed{3h}", "3", "variable Math-Verify takes for a unit (hours)"),
    (r"\boxed{12 + 5t}", "17", "variable inside an expression"),
    (r"\boxed{18 \div 2}", "2", "the gold inside an expression"),
    (r"\boxed{\sum_{n=1}^{5} n}", "1", "the gold inside an expression"),
    (r"\boxed{18 - 2}", "18", "the gold inside an expression"),
    (r"\boxed{10^{2}}", "10", "the gold inside a power"),
    (r"\boxed{5^2}", "5", "power"),
    (r"\boxed{\sqrt{5}}", "5", "root"),
    (r"\boxed{\frac{5}{2}}", "5", "fraction"),
    (r"\boxed{5!}", "5", "factorial"),
    (r"\boxed{x + 2}", "x + 3", "a different number inside an expression"),
    (r"\boxed{2\sqrt{3}}", r"3\sqrt{3}", "a different coefficient"),
    (r"\boxed{5 +}", "5", "unfinished expression"),
    (r"\boxed{2 \times}", "2", "unfinished expression"),
    (r"So the answer is \boxed{\frac{1}{2}", "2", "cut off inside the box"),
    (r"First \boxed{3}, then \boxed{5}", "3", "an earlier box"),
    (r"\boxed{5 \text{ or } 6}", "5", "two answers"),
    (r"\boxed{3, 5}", "5", "two answers"),
    (r"\boxed{5 \pm 1}", "5", "plus-minus"),
    (r"\boxed{-5}", "5", "sign"),
    (r"\boxed{50}", "5", "magnitude"),
    (r"\boxed{5.1}", "5", "decimal"),
    (r"\boxed{0.33}", r"\frac{1}{3}", "too few decimals"),
    (r"\boxed{1,001}", "1000", "off by one"),
    (r"\boxed{\$18.5}", "18", "cents"),
    (r"\boxed{5\%}", "50", "percent of a different number"),
    (r"\boxed{(3, 1)}", "(3,-1)", "tuple element"),
    (r"\boxed{[2, 5]}", "[2,5)", "interval end"),
]


def _example(gold: str) -> QAExample:
    return QAExample(id="q", question="?", answer=parse_gold_answer(gold))


@pytest.mark.parametrize(("completion", "gold", "why"), EQUIVALENT)
def test_graded_set_equivalent_forms_are_correct(completion: str, gold: str, why: str) -> None:
    assert grade(completion, _example(gold)), why


@pytest.mark.parametrize(("completion", "gold", "why"), NEAR_MISSES)
def test_graded_set_near_misses_are_wrong(completion: str, gold: str, why: str) -> None:
    assert not grade(completion, _example(gold)), why


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [("$5", "5"), ("18 dollars", "18"), (r"\text{10 apples}", "10"), ("1/2", "0.5"), ("x = 2", "2"), ("-40", "-40")],
)
def test_verify_accepts_equivalent_answers(predicted: str, gold: str) -> None:
    assert verify_answer(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"), [("3", "4"), ("40", "-40"), ("", "1"), (None, "1"), ("5 x", "5"), ("1}{2", "1")]
)
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


# --- Bounded time on pathological inputs ----------------------------------------------------------------------

BOMB = r"\boxed{10^{10^{10}}}"  # sympy tries to evaluate a ten-billion-digit number; no signal can stop it


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """A 1 s Math-Verify limit, with a worker already started so the timings measure the comparison only."""
    monkeypatch.setattr(verify_worker, "MATH_VERIFY_TIMEOUT_S", 1.0)
    assert verify_answer(r"\frac{1}{x}", r"x^{-1}")
    return 1.0


def test_long_unclosed_input_is_fast() -> None:
    for text in ("\\boxed{" * 20000, "{" * 200_000 + r"\boxed{5}", "answer: " * 50_000, "1," * 100_000):
        start = time.perf_counter()
        grade(text, QAExample(id="q", question="?", answer="5"))
        assert time.perf_counter() - start < 0.5, text[:20]
    start = time.perf_counter()
    assert not verify_answer("x+" * 5000 + "1", "x")  # too long to parse: exact match only
    assert time.perf_counter() - start < 0.5


def test_bomb_is_bounded_in_the_main_thread(short_timeout: float) -> None:
    start = time.perf_counter()
    assert not grade(BOMB, QAExample(id="q", question="?", answer="5"))
    assert time.perf_counter() - start < short_timeout + 3
    assert verify_answer("2x + 1", "1 + 2x")  # the killed worker is replaced


def test_bomb_is_bounded_in_a_worker_thread(short_timeout: float) -> None:
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(grade(BOMB, QAExample(id="q", question="?", answer="7"))))
    start = time.perf_counter()
    thread.start()
    thread.join(timeout=short_timeout + 30)  # generous: a fresh worker may have to start on a busy machine
    assert not thread.is_alive()
    assert results == [False]
    assert time.perf_counter() - start < short_timeout + 30


def _grade_in_child(queue: multiprocessing.Queue) -> None:
    queue.put([verify_answer(r"10^{10^{10}}", "3"), verify_answer(r"\frac{2}{4}", "0.5"), verify_answer("2y", "y+y")])


def test_grading_from_a_forked_daemon_process(short_timeout: float) -> None:
    # Data-loader workers are forked daemons: they may not start multiprocessing children, and must not
    # share the parent's Math-Verify worker (started by the fixture).
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_grade_in_child, args=(queue,), daemon=True)
    process.start()
    assert queue.get(timeout=short_timeout + 60) == [False, True, True]
    process.join(timeout=10)
    assert verify_answer("3y", "y+2y")  # the parent's worker is still its own


# --- Gold answers that cannot be parsed -------------------------------------------------------------------------


def test_unparsable_gold_answers_are_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    golds = ["5", r"\frac{1}{2}", r"3 \times", r"\frac{1}{", "x^2+1", r"\sqrt{}{}"]
    examples = [QAExample(id=f"q{i}", question="?", answer=gold) for i, gold in enumerate(golds)]
    with caplog.at_level(logging.WARNING, logger="ssb_trl.tasks.grading"):
        assert check_gold_answers(examples, "unparsable-golds-test") == 3
        assert check_gold_answers(examples, "unparsable-golds-test") == 3
    warnings = [record.getMessage() for record in caplog.records if "cannot be parsed" in record.getMessage()]
    assert len(warnings) == 1
    assert "3 of 6 gold answers from unparsable-golds-test" in warnings[0]
    assert "q2" in warnings[0]


def test_load_questions_warns_about_unparsable_golds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "golds.jsonl"
    rows = [{"question": "a?", "answer": "4"}, {"question": "b?", "answer": r"\frac{1}{"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING, logger="ssb_trl.tasks.grading"):
        load_questions(QuestionSource(str(path)))
    assert any("1 of 2 gold answers" in record.getMessage() for record in caplog.records)


# Issue 30: gold answers in scientific notation (a JSON 1e3; Python's json writes the float 1e16 as 1e+16).
@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("1000", "1e3"),
        ("1000", "1e+03"),
        ("1000", "1E3"),
        ("1000", "1.0e3"),
        ("0.001", "1e-3"),
        ("10000000000000000", "1e+16"),
        ("1e3", "1000"),
        ("-250", "-2.5e2"),
    ],
)
def test_scientific_notation_equals_the_plain_number(predicted: str, gold: str) -> None:
    """All but 1E3 were graded wrong: every correct answer to such a gold counted as a miss."""
    assert verify_answer(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [("10000000000000001", "1e+16"), ("1001", "1e3"), ("100", "1e3"), ("0.0011", "1e-3"), ("999.9999999999", "1e3")],
)
def test_scientific_notation_is_compared_exactly(predicted: str, gold: str) -> None:
    assert not verify_answer(predicted, gold)


def test_json_golds_in_scientific_notation_survive_reading(tmp_path: Path) -> None:
    path = tmp_path / "golds.jsonl"
    path.write_text(
        json.dumps({"question": "a?", "answer": 1e3}).replace("1000.0", "1e3")
        + "\n"
        + json.dumps({"question": "b?", "answer": 1e16})  # written as 1e+16
        + "\n"
        + '{"question": "c?", "answer": 123456789012345678901234567890}\n'
    )
    examples = load_questions(QuestionSource(str(path)))
    assert [example.answer for example in examples] == ["1000", "10000000000000000", "123456789012345678901234567890"]
    assert grade("So the answer is 1000.", examples[0])
    assert grade(r"\boxed{10000000000000000}", examples[1])
    assert not grade(r"\boxed{10000000000000001}", examples[1])


# Issue 30: the last-number fallback credited number dumps and hedges.
@pytest.mark.parametrize(
    "text",
    [
        "1 2 3 4 5 6 7 8 9 10 11 12",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
        "I don't know. Maybe 11 or 12",
        "It could be 11 or 12",
        "The total is 11, 12",
        "Perhaps it is 12",
        "I'm not sure, 12",
    ],
)
def test_the_last_number_fallback_does_not_credit_dumps_or_hedges(text: str) -> None:
    assert extract_final_answer(text) is None
    assert not grade(text, _example("12"))


# Real answers of the bundled SmolLM2-135M-Instruct (sampled at T = 0.8 on the demo task and word problems) and
# the usual shapes of an unboxed answer: the fallback still credits them.
@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("To calculate 3 + 3, you simply add them together: 3 + 3 equals 6. This is a straightforward addition.", "6"),
        ("4 * 8 = 24, 2*24 = 48 which equals 32.", "32"),
        ("So, the result of adding the numbers is 36.", "36"),
        ("3 + 4 = 7", "7"),
        ("So the answer is 7.", "7"),
        ("Tom has 3 apples and buys 4 more, so he has 7 apples.", "7"),
        ("Step 1: 5 + 3 = 8\nStep 2: 8 * 2 = 16\nSo she has 16 apples left.", "16"),
        ("We get 3, then 5, and at last 12", "12"),
        ("12 - 4 = 8. Then 8 + 4 = 12", "12"),
        ("Calculating -5 * -6 gives 30.", "30"),
    ],
)
def test_the_last_number_fallback_still_credits_real_answers(text: str, gold: str) -> None:
    assert grade(text, _example(gold))
