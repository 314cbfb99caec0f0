"""Bad question sources (issues 10, 17 and 30), read by `ssb_trl.tasks.sources`: question files that are empty,
without rows, not UTF-8, broken or overlong; splits a file or folder lacks; large integer gold answers; folders of
mixed formats; unknown reasoning-gym tasks. Each case asserts the message a user sees.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from ssb_trl.eval import EvalConfig, load_eval_questions
from ssb_trl.prepare import PrepConfig
from ssb_trl.tasks.grading import grade
from ssb_trl.tasks.sources import QuestionSource, load_questions
from tests.helpers import GOLDS, write_questions


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------------------- empty or broken files


def test_empty_and_non_utf8_question_files_name_the_file_and_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"data file '.*empty\.jsonl' is empty"):
        load_questions(QuestionSource(dataset_name=str(empty)))
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"question": "1+1?", "answer": "2"}\n{"question": "caf\xe9 2+2?", "answer": "4"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl': line 2 is not UTF-8 text \(byte 0xe9 at column 18\)"):
        load_questions(QuestionSource(dataset_name=str(latin)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "1+1?", "answer": "2"}\n\n{"question": "2+2?", "answer": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl': line 3 is not valid JSON"):
        load_questions(QuestionSource(dataset_name=str(broken)))
    latin_csv = tmp_path / "latin1.csv"
    latin_csv.write_bytes(b"question,answer\n1+1?,2\ncaf\xe9,4\n")
    with pytest.raises(ValueError, match=r"latin1\.csv': line 3 is not UTF-8"):
        load_questions(QuestionSource(dataset_name=str(latin_csv)))


def test_overlong_questions_are_skipped_with_a_count_and_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"question": "What is 1 + 1?", "answer": "2"},
        {"question": "What is 2 + 2? " + "x" * 30_000, "answer": "4"},
        {"question": "What is 3 + 3?", "answer": "6"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING):
        questions = load_questions(QuestionSource(dataset_name=str(path)))
    assert [q.id for q in questions] == ["train/0", "train/2"]  # ids keep the row numbers: stable if the cap changes
    assert "Skipped 1 of 3 questions" in _messages(caplog)
    assert "max_question_chars=20000 characters (longest: 30015)" in _messages(caplog)
    with pytest.raises(ValueError, match="longer than max_question_chars=5"):
        load_questions(QuestionSource(dataset_name=str(path), max_question_chars=5))
    # Evaluation records the count in results.json's "benchmark".
    _, source = load_eval_questions(EvalConfig(models=["m"], dataset_name=str(path)))
    assert (source["rows_read"], source["skipped_too_long"], source["evaluated"]) == (3, 1, 2)


@pytest.mark.parametrize(
    ("files", "source", "shape"),
    [
        ({"q.csv": "question,answer\n"}, "q.csv", "a CSV header and no row below it"),
        ({"folder/train.jsonl": "[]\n"}, "folder", "an empty JSON list"),
        ({"q.json": "[ ]"}, "q.json", "an empty JSON list"),
    ],
)
def test_a_data_file_without_rows_says_so(tmp_path: Path, files: dict, source: str, shape: str) -> None:
    """datasets' 'Instruction "train" corresponds to no data!'."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"holds no rows \({shape}\); fill it, or point at another file") as error:
        load_questions(QuestionSource(dataset_name=str(tmp_path / source)))
    assert "corresponds to no data" not in str(error.value)


# --------------------------------------------------------------------------------------------------- splits


def test_a_missing_split_names_the_splits_and_the_flag(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "by_split"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"has no split 'test'.*--dataset_split"):
        load_questions(QuestionSource(dataset_name=str(folder), dataset_split="test"))
    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list([{"question": "1+1?", "answer": "2"}])}).save_to_disk(str(saved))
    with pytest.raises(ValueError, match=r"has no split 'test'; its splits are \['train'\].*--dataset_split"):
        load_questions(QuestionSource(dataset_name=str(saved), dataset_split="test"))


def test_a_split_asked_of_a_single_file_is_refused(tmp_path: Path) -> None:
    """--dataset_split test on one .jsonl file read the file as if it were the test split."""
    path = write_questions(tmp_path / "q.jsonl", GOLDS[:3])
    with pytest.raises(ValueError, match=r"is a single file, which holds one split, read as 'train'; it has no split"):
        load_questions(QuestionSource(dataset_name=str(path), dataset_split="test"))
    assert len(load_questions(QuestionSource(dataset_name=str(path), dataset_split="train"))) == 3


# ------------------------------------------------------------------------------------ large integer gold answers


BIG = "12345678901234567890"  # above int64


ODD = "9007199254740993"  # 2**53 + 1: a float64 cannot hold it


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_large_integer_gold_answers_are_read_as_written(tmp_path: Path, suffix: str) -> None:
    rows = [("What is big?", BIG), ("What is odd?", ODD), ("What is half?", "1.50"), ("What is two?", "2")]
    path = tmp_path / f"q{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(f'{{"question": "{q}", "answer": {a}}}\n' for q, a in rows))
    elif suffix == ".json":
        path.write_text("[" + ", ".join(f'{{"question": "{q}", "answer": {a}}}' for q, a in rows) + "]")
    elif suffix == ".csv":
        path.write_text("question,answer\n" + "".join(f"{q},{a}\n" for q, a in rows))
    else:  # parquet stores types: an int64 column holds int64 values exactly
        rows = [("What is max?", str(2**63 - 1)), ("What is odd?", ODD)]
        pd.DataFrame({"question": [q for q, _ in rows], "answer": [int(a) for _, a in rows]}).to_parquet(path)
    questions = load_questions(QuestionSource(dataset_name=str(path)))
    assert [q.answer for q in questions] == [a for _, a in rows]
    for question in questions:
        assert grade(f"The answer is \\boxed{{{question.answer}}}", question)
    if suffix != ".parquet":
        wrong = next(q for q in questions if q.answer == ODD)
        assert not grade("The answer is \\boxed{9007199254740992}", wrong)


def test_large_gold_answers_in_a_folder_of_split_files(tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        f'{{"question": "a?", "answer": {BIG}}}\n{{"question": "b?", "answer": 0.5}}\n'
    )
    (folder / "test.csv").write_text(f"question,answer\nc?,{ODD}\n")
    assert [q.answer for q in load_questions(QuestionSource(dataset_name=str(folder)))] == [BIG, "0.5"]
    assert [q.answer for q in load_questions(QuestionSource(dataset_name=str(folder), dataset_split="test"))] == [ODD]


# ------------------------------------------------------------------------------------- folders of mixed formats


def test_a_question_folder_of_mixed_formats_is_refused_naming_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "qs"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    (folder / "b.csv").write_text("question,answer\n2+2?,4\n3+3?,6\n")
    with pytest.raises(
        ValueError, match=r"mixes data formats in split 'train': a\.jsonl \(json\), b\.csv \(csv\)"
    ) as error:
        load_questions(QuestionSource(dataset_name=str(folder)))
    assert "convert them to one format" in str(error.value)
    (folder / "b.csv").unlink()
    (folder / "b.json").write_text('[{"question": "2+2?", "answer": "4"}]')  # .json and .jsonl: one format
    assert [q.question for q in load_questions(QuestionSource(dataset_name=str(folder)))] == ["1+1?", "2+2?"]


# --------------------------------------------------------------------------------------- reasoning-gym tasks


@pytest.mark.parametrize("config", [QuestionSource, EvalConfig, PrepConfig])
def test_an_unknown_reasoning_gym_task_is_named_before_num_questions(config) -> None:
    """It asked for --num_questions first; given one, it then said the task does not exist."""
    kwargs = {"models": ["m"]} if config is EvalConfig else {"model_name_or_path": "m"} if config is PrepConfig else {}
    with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'no_such_task'; examples of valid tasks"):
        config(dataset_name="reasoning_gym:no_such_task", **kwargs)
