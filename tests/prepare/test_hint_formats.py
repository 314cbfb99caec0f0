"""Hint formats (--teacher_hint), the hint's gain measured in every preparation run, and the arithmetic-step check.

Preparation runs use the digit model of tests/helpers.py (a real tiny Llama acting as a bigram model: it answers
1, 2 or 3 whatever it is shown), so the hinted and unhinted accuracies are both about a third and their gain is
known to be near 0; what is tested is that the right prompts are built, recorded, reused and measured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import statistics
from pathlib import Path

import pytest

from ssb_trl.jobs.workdir import read_jsonl
from ssb_trl.prepare import prepare_ssb_data
from ssb_trl.prepare.config import PrepConfig
from ssb_trl.prepare.hint_gain import hint_gain, hinted_outcomes
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.prepare.stages import choose_hint
from ssb_trl.prepare.summary import SUMMARY_FILENAME
from ssb_trl.soft_labels.io import load_soft_label_dataset
from ssb_trl.tasks.prompts import HINT_FORMATS, chat_prompt_ids, load_hint_format
from ssb_trl.tasks.steps import StepCheck, check_arithmetic_steps
from tests.helpers import GOLDS, make_digit_model, small_config, write_questions

QUESTION = "What is {2 + 3} times 4?"
CORRECT, INCORRECT = r"5 * 4 = \boxed{20}", r"2 + 3 * 4 = \boxed{14}"


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("name", list(HINT_FORMATS))
def test_each_builtin_format_fills_its_fields_and_is_versioned(name: str, tokenizer) -> None:
    hint = HINT_FORMATS[name]
    assert hint.version == f"{name}-v1"
    user = hint.messages(QUESTION, correct=CORRECT, incorrect=INCORRECT, answer="20")[-1]["content"]
    assert QUESTION in user and "\\boxed{}" in user and "{{" not in user and "{answer}" not in user
    assert (CORRECT in user) == hint.needs_correct == (name != "answer_only")
    assert (INCORRECT in user) == hint.needs_incorrect == name.startswith("contrastive")
    if name == "answer_only":
        assert "The correct final answer is 20." in user
    if hint.needs_correct and hint.needs_incorrect:
        assert user.index(QUESTION) < user.index(CORRECT) < user.index(INCORRECT)
    assert len(chat_prompt_ids(tokenizer, hint.messages(QUESTION, CORRECT, INCORRECT, "20"))) > 20
    # A field the format needs must be given.
    if hint.needs_correct:
        with pytest.raises(ValueError, match="needs correct"):
            hint.messages(QUESTION, incorrect=INCORRECT, answer="20")


def test_short_formats_are_shorter_than_the_papers(tokenizer) -> None:
    lengths = {
        name: len(chat_prompt_ids(tokenizer, hint.messages(QUESTION, CORRECT, INCORRECT, "20")))
        for name, hint in HINT_FORMATS.items()
    }
    assert lengths["answer_only"] < lengths["correct_solution"] < lengths["contrastive_short"] < lengths["contrastive"]


def test_template_file(tmp_path: Path) -> None:
    path = tmp_path / "hint.txt"
    path.write_text("Solve {question}. A student wrote: {correct}. Finish with \\boxed{{}}.", encoding="utf-8")
    hint = load_hint_format(str(path))
    assert hint.name == "file:hint.txt" and hint.version.startswith("file-sha256:")
    assert hint.fields == {"question", "correct"} and hint.needs_correct and not hint.needs_incorrect
    assert (
        hint.messages("1+1?", correct="2")[-1]["content"] == "Solve 1+1?. A student wrote: 2. Finish with \\boxed{}."
    )
    path.write_text("Solve {question} now.", encoding="utf-8")  # edited in place: another version
    assert load_hint_format(str(path)).version != hint.version
    # Bad templates are refused, saying what is wrong and what is allowed.
    for text, message in (
        ("Solve {problem}.", r"uses the field \{problem\}; allowed: \{question\}"),
        ("Solve {question} in \\boxed{}.", r"uses the field \{\}"),
        ("Solve {question} {", "str.format syntax"),
        ("The answer is {answer}.", r"never shows the problem: add \{question\}"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_hint_format(str(path))
    with pytest.raises(ValueError, match="neither a built-in hint format nor a file: pass one of contrastive"):
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="m", teacher_hint="answer-only")
    with pytest.raises(ValueError, match="hint_check_samples must be >= 0"):
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="m", hint_check_samples=-1)


def test_which_questions_each_format_serves() -> None:
    def rollouts(*answers):
        return [{"answer": a, "correct": a == "5", "text": f"so {a}"} for a in answers]

    both, all_right, all_wrong = rollouts("5", "7"), rollouts("5", "5"), rollouts("6", "7")
    for name in HINT_FORMATS:
        paired_only = PrepConfig(dataset_name="q", model_name_or_path="m", teacher_hint=name)
        unpaired = PrepConfig(
            dataset_name="q", model_name_or_path="m", teacher_hint=name, teacher_unpaired_questions=True
        )
        for config in (paired_only, unpaired):  # a pair is always served, the same way whatever the format
            assert choose_hint(both, random.Random(0), config) == {
                "correct_index": 0,
                "incorrect_index": 1,
                "incorrect_answer": "7",
            }
        assert choose_hint(all_right, random.Random(0), paired_only) is None
        assert choose_hint(all_wrong, random.Random(0), paired_only) is None
        served = (
            choose_hint(all_right, random.Random(0), unpaired),
            choose_hint(all_wrong, random.Random(0), unpaired),
        )
        expected = {
            "contrastive": (None, None),
            "contrastive_short": (None, None),
            "correct_solution": (
                {"correct_index": served[0] and served[0]["correct_index"], "incorrect_index": None},
                None,
            ),
            "answer_only": ({"correct_index": None, "incorrect_index": None},) * 2,
        }[name]
        assert served == expected
        if name == "correct_solution":
            assert served[0]["correct_index"] in (0, 1)  # a correct rollout, drawn at random


def test_hint_gain_statistics_match_a_direct_computation() -> None:
    rng = random.Random(3)
    hinted = {f"q{i}": [rng.random() < 0.6 for _ in range(4)] for i in range(50)}
    unhinted = {f"q{i}": [rng.random() < 0.4 for _ in range(2)] for i in range(45)}  # 5 questions unmeasured
    gain = hint_gain(hinted, unhinted)
    ids = sorted(unhinted)
    diffs = [sum(hinted[i]) / 4 - sum(unhinted[i]) / 2 for i in ids]
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    assert gain.questions == 45 and gain.hinted_attempts == 180 and gain.unhinted_attempts == 90
    assert gain.gain_points == pytest.approx(100 * statistics.mean(diffs))
    assert (gain.gain_low, gain.gain_high) == pytest.approx(
        (gain.gain_points - 100 * half, gain.gain_points + 100 * half), abs=1e-3
    )
    assert gain.verdict == ("helps" if gain.gain_low > 0 else "unclear" if gain.gain_high > 0 else "does not help")
    worse = hint_gain({"a": [False, False], "b": [False], "c": [True]}, {"a": [True], "b": [True], "c": [True]})
    assert worse.verdict == "does not help" and worse.gain_high <= 0
    assert hint_gain({"a": [True]}, {}) is None
    # Attempts taken one round at a time stop at the first correct one: only the first measures accuracy.
    record = {"attempts": [{"correct": False}, {"correct": True}]}
    assert hinted_outcomes(record, attempts_in_parallel=True) == [False, True]
    assert hinted_outcomes(record, attempts_in_parallel=False) == [False]


def test_arithmetic_steps() -> None:
    check = check_arithmetic_steps(
        "First 3 + 4 = 7, then 7 \\times 2 = 15. So 10 - 3 - 2 = 5 and 7 / 3 = 2.33; 1,000 + 1 = 1001. x = 3."
    )
    assert check.checked == 5 and check.wrong == ("7 * 2 = 15",) and check.has_wrong_step
    rationalised = "We add 1 to 4 which is 11. 4 + 1 = 11. So, the final answer is \\boxed{5}."
    assert check_arithmetic_steps(rationalised).wrong == ("4 + 1 = 11",)
    assert check_arithmetic_steps("The answer is 5.").checked == 0
    assert check_arithmetic_steps("2024-01-02 = a date; 6 ÷ 0 = 1").checked == 0
    assert not check_arithmetic_steps("9 × 8 = 72 and 2 x 3 = 6 and -3 + 5 = 2").has_wrong_step
    # Kept answers of a real run (experiment 2, answer_only): a chain across a line break is not one step (it
    # crashed the summary with a SyntaxError); each line's own step still counts.
    listed = "the final answer is 1.\n\nThe steps are:\n- 8 - 7 = 1\n- 11 = 1\n- 1 = 1\n\nThe final answer is 1."
    assert check_arithmetic_steps(listed) == StepCheck(1, ())
    lines = "Step 1: Add the result\n-5 + 5 = 10\n\nStep 2: Multiply the result by -1\n-10 * 10 = -100\n"
    assert check_arithmetic_steps(lines) == StepCheck(2, ("-5 + 5 = 10",))


def test_preparation_measures_the_hint_gain_and_records_the_format(tmp_path: Path, tokenizer, caplog) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = small_config(tmp_path, questions, hint_check_samples=3)
    with caplog.at_level(logging.INFO, logger="ssb_trl"):
        summary = prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    gain = summary.hint_gain
    assert gain is not None and gain["questions"] == summary.pairs == summary.teacher_questions > 0
    assert gain["unhinted_attempts"] == 3 * summary.pairs and gain["hinted_attempts"] == summary.teacher_attempts
    # The digit model answers 1, 2 or 3 whatever it is shown: both near a third, and the interval holds 0.
    assert 0.1 < gain["hinted_accuracy"] < 0.6 and 0.1 < gain["unhinted_accuracy"] < 0.6
    assert gain["gain_low"] < 0 < gain["gain_high"] and gain["verdict"] == "unclear"
    assert "hint gain (hinted vs alone, same questions)" in caplog.text and "unclear" in caplog.text
    written = json.loads((Path(config.output_dir) / SUMMARY_FILENAME).read_text())
    assert written["hint_gain"] == gain and written["teacher_hint"] == "contrastive"
    _, metadata = load_soft_label_dataset(config.output_dir)
    assert metadata.source["hint_gain"] == gain
    assert (
        metadata.source["teacher_hint"] == "contrastive"
        and metadata.source["teacher_hint_version"] == "contrastive-v1"
    )
    assert metadata.source["kept_answers_with_wrong_arithmetic_step"] == [0, 0]  # digits write no steps
    work = PrepareJob.work_dir(config.output_dir)
    check = read_jsonl(work.shard_path("hint_check", 0))
    asked = {r["id"] for r in read_jsonl(work.shard_path("teacher", 0)) if r["pair"] is not None}
    assert {r["id"] for r in check if r["unhinted"]} == asked

    # Another format in the same folder: the rollouts are reused, the teacher, hint check and rows are redone.
    rollout_files = {p: p.stat().st_mtime_ns for p in (work.root / "rollouts").iterdir()}
    teacher_written = work.shard_path("teacher", 0).stat().st_mtime_ns
    answer_only = small_config(tmp_path, questions, hint_check_samples=3, teacher_hint="answer_only")
    with caplog.at_level(logging.WARNING, logger="ssb_trl"):
        caplog.clear()
        second = prepare_ssb_data(answer_only, model=model, tokenizer=tokenizer, show_progress=False)
    assert (
        "teacher_hint: 'contrastive' -> 'answer_only'" in caplog.text
        and "reusing the finished rollouts" in caplog.text
    )
    assert {p: p.stat().st_mtime_ns for p in (work.root / "rollouts").iterdir()} == rollout_files
    assert work.shard_path("teacher", 0).stat().st_mtime_ns != teacher_written  # the teacher was asked again
    assert second.teacher_hint == "answer_only" and second.pairs == summary.pairs
    _, metadata = load_soft_label_dataset(config.output_dir)
    assert metadata.source["teacher_hint"] == "answer_only"
    # The soft labels were taken under the hinted prompt the answer was written with; the student prompt is bare.
    dataset, _ = load_soft_label_dataset(config.output_dir)
    assert all("correct final answer" not in row["prompt"][-1]["content"] for row in dataset)

    # Serving unpaired questions too (answer_only needs no rollout at all): more questions asked, same pairs.
    unpaired = small_config(
        tmp_path, questions, hint_check_samples=3, teacher_hint="answer_only", teacher_unpaired_questions=True
    )
    third = prepare_ssb_data(unpaired, model=model, tokenizer=tokenizer, show_progress=False)
    assert third.pairs == summary.pairs and third.teacher_questions == len(GOLDS) > third.pairs
    assert third.hint_gain["questions"] == len(GOLDS)

    # Switching the check off keeps everything else and records no gain.
    off = small_config(
        tmp_path, questions, hint_check_samples=0, teacher_hint="answer_only", teacher_unpaired_questions=True
    )
    fourth = prepare_ssb_data(off, model=model, tokenizer=tokenizer, show_progress=False)
    assert fourth.hint_gain is None and fourth.teacher_kept == third.teacher_kept


def test_an_edited_template_file_redoes_the_teacher(tmp_path: Path, tokenizer, caplog) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:6])
    template = tmp_path / "hint.txt"
    template.write_text("{question}\nThe answer is {answer}.", encoding="utf-8")
    config = small_config(tmp_path, questions, teacher_hint=str(template), hint_check_samples=0)
    prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    _, metadata = load_soft_label_dataset(config.output_dir)
    first_version = metadata.source["teacher_hint_version"]
    assert metadata.source["teacher_hint"] == f"file:hint.txt@{first_version}"
    # Spelled another way (a relative path): the same template, nothing redone.
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ssb_trl"):
            prepare_ssb_data(
                small_config(tmp_path, questions, teacher_hint="hint.txt", hint_check_samples=0),
                model=model,
                tokenizer=tokenizer,
                show_progress=False,
            )
        assert "settings changed" not in caplog.text
    finally:
        os.chdir(here)
    template.write_text("{question}\nHint: the answer is {answer}.", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssb_trl"):
        prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    assert "teacher_hint" in caplog.text and "reusing the finished rollouts" in caplog.text
    _, metadata = load_soft_label_dataset(config.output_dir)
    assert metadata.source["teacher_hint_version"] != first_version


def test_a_hint_field_with_a_conversion_is_refused_without_contradiction(tmp_path: Path) -> None:
    """It said 'uses the field {question}; allowed: {question} ...'."""
    path = tmp_path / "hint.txt"
    path.write_text("Problem: {question!r}\nAnswer: {answer}")
    with pytest.raises(ValueError) as error:
        load_hint_format(str(path))
    message = str(error.value)
    assert "writes {question!r}: a field is shown as it is, with no conversion (!r, !s)" in message
    assert message.endswith("write {question}") and "uses the field" not in message
    path.write_text("Problem: {question}\nAnswer: {answer:>5}")
    with pytest.raises(ValueError, match=r"writes \{answer:>5\}: .*write \{answer\}"):
        load_hint_format(str(path))


def test_a_hint_that_shows_only_the_question_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bare.txt"
    path.write_text("Solve this carefully:\n{question}\nEnd with \\boxed{{}}.")
    with caplog.at_level(logging.WARNING, logger="ssb_trl.tasks.prompts"):
        for _ in range(3):  # loaded once per question: warned once
            hint = load_hint_format(str(path))
    assert hint.fields == {"question"}
    warnings = [record.getMessage() for record in caplog.records if "shows only {question}" in record.getMessage()]
    assert len(warnings) == 1 and "the teacher then sees nothing the student does not" in warnings[0]
    assert "{answer} (the verified gold answer)" in warnings[0]
    caplog.clear()
    path.write_text("{question}\nThe answer is {answer}.")
    with caplog.at_level(logging.WARNING, logger="ssb_trl.tasks.prompts"):
        load_hint_format(str(path))
    assert "shows only" not in _messages(caplog)
