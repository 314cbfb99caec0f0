"""Question sources: reasoning-gym tasks, local files in every format, presets, and the error paths."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from ssb_trl.tasks.sources import QAExample, QuestionSource, load_questions

ONE_DIGIT = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A shop sells 1,000 pens a day for 2 days. How many?", "answer": "1000 * 2 = 2000\n#### 2,000"},
]


def rg(task: str = "reasoning_gym:basic_arithmetic", **kwargs) -> QuestionSource:
    return QuestionSource(task, **{"task_config": ONE_DIGIT, "num_questions": 6, **kwargs})


def test_reasoning_gym_source_is_deterministic_and_keeps_its_scorer() -> None:
    first = load_questions(rg(source_seed=7))
    again = load_questions(rg("rg:basic_arithmetic", source_seed=7))
    other = load_questions(rg(source_seed=8))
    assert [e.to_dict() for e in first] == [e.to_dict() for e in again]
    assert [e.question for e in first] != [e.question for e in other]
    assert len({e.id for e in first}) == 6
    for example in first:
        assert example.question.startswith("Calculate")
        assert example.scorer == {
            "type": "reasoning_gym",
            "task": "basic_arithmetic",
            "config": ONE_DIGIT,
            "seed": 7,
            "size": 6,
            "index": int(example.id.rsplit("/", 1)[1]),
        }
        assert example.score(example.answer) == 1.0
        # Examples survive a JSON round trip (the pipeline persists them) with their scorer intact.
        restored = QAExample.from_dict(json.loads(json.dumps(example.to_dict())))
        assert restored == example
        assert restored.score(example.answer) == 1.0


def test_num_questions_limits_every_source(tmp_path: Path) -> None:
    assert len(load_questions(rg(num_questions=3))) == 3
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in GSM8K_ROWS))
    assert [e.id for e in load_questions(QuestionSource(str(path), num_questions=1))] == ["train/0"]
    assert len(load_questions(QuestionSource(str(path)))) == 2  # all questions by default
    with pytest.raises(ValueError, match="set num_questions"):
        QuestionSource("reasoning_gym:basic_arithmetic")  # generated questions have no "all"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_files_with_gsm8k_answers(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"questions{suffix}"
    table = datasets.Dataset.from_list(GSM8K_ROWS)
    {".jsonl": table.to_json, ".parquet": table.to_parquet, ".csv": table.to_csv}[suffix](str(path))
    examples = load_questions(QuestionSource(str(path)))
    assert [(e.id, e.answer) for e in examples] == [("train/0", "7"), ("train/1", "2000")]
    assert examples[0].question == GSM8K_ROWS[0]["question"]
    assert all(e.scorer is None for e in examples)


def test_math_style_solutions_and_custom_fields(tmp_path: Path) -> None:
    rows = [
        {"uid": "a", "problem": "Half of one?", "solution": r"It is $\boxed{\frac{1}{2}}$."},
        {"uid": "b", "problem": "Square of x?", "solution": r"We get \boxed{x^{2}}"},
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    examples = load_questions(
        QuestionSource(str(path), question_field="problem", answer_field="solution", id_field="uid")
    )
    assert [(e.id, e.answer) for e in examples] == [("a", r"\frac{1}{2}"), ("b", "x^{2}")]


def test_saved_dataset_directory(tmp_path: Path) -> None:
    datasets.DatasetDict({"test": datasets.Dataset.from_list(GSM8K_ROWS)}).save_to_disk(str(tmp_path / "dd"))
    assert [e.answer for e in load_questions(QuestionSource(str(tmp_path / "dd"), dataset_split="test"))] == [
        "7",
        "2000",
    ]
    with pytest.raises(ValueError, match="has no split 'train'; its splits are \\['test'\\]"):
        load_questions(QuestionSource(str(tmp_path / "dd")))


def test_missing_fields_name_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "target": "2"}))
    with pytest.raises(ValueError, match=r"no field\(s\) \['question', 'answer'\].*\['prompt', 'target'\]"):
        load_questions(QuestionSource(str(path)))
    assert load_questions(QuestionSource(str(path), question_field="prompt", answer_field="target"))[0].answer == "2"


def test_empty_sources_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text(json.dumps({"question": "", "answer": "1"}) + "\n" + json.dumps({"question": "q", "answer": ""}))
    with pytest.raises(ValueError, match="yielded no questions"):
        load_questions(QuestionSource(str(path)))


def test_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_questions(QuestionSource(str(tmp_path / "missing.jsonl")))
    odd = tmp_path / "questions.txt"
    odd.write_text("1+1")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_questions(QuestionSource(str(odd)))
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        load_questions(rg("reasoning_gym:no_such_task"))
    with pytest.raises(ValueError, match="invalid config for reasoning-gym task"):
        load_questions(rg(task_config={"no_such_option": 1}))
    with pytest.raises(ValueError, match="could not load rows from 'nobody/no-such-dataset-ssb'"):
        load_questions(QuestionSource("nobody/no-such-dataset-ssb"))
    with pytest.raises(ValueError, match="no question source"):
        load_questions(QuestionSource(""))
    with pytest.raises(ValueError, match="task_config must be a JSON object"):
        QuestionSource("rg:basic_arithmetic", task_config="{max_terms: 3", num_questions=1)
    with pytest.raises(ValueError, match="mapping"):
        QuestionSource("rg:basic_arithmetic", task_config="[1, 2]", num_questions=1)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps({"id": 1, "question": f"q{i}", "answer": "1"}) for i in range(2)))
    with pytest.raises(ValueError, match="duplicate ids"):
        load_questions(QuestionSource(str(path), id_field="id"))


def test_directory_of_split_files_loads_like_a_hub_repo(tmp_path: Path) -> None:
    # datasets resolves a Hub repo and a local folder the same way (split names from file names), so this
    # exercises the Hub code path offline: name -> load_dataset(name, config_name, split=...).
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.jsonl").write_text(json.dumps(GSM8K_ROWS[0]) + "\n")
    (repo / "test.jsonl").write_text(json.dumps(GSM8K_ROWS[1]) + "\n")
    assert [(e.id, e.answer) for e in load_questions(QuestionSource(str(repo), dataset_split="test"))] == [
        ("test/0", "2000")
    ]
    assert [(e.id, e.answer) for e in load_questions(QuestionSource(str(repo)))] == [("train/0", "7")]


def test_presets_fill_only_the_unset_fields() -> None:
    math500 = QuestionSource("math500")
    assert (math500.dataset_split, math500.question_field, math500.answer_field) == ("test", "problem", "answer")
    assert math500.describe()["description"] == "MATH-500 test (500 problems), Hub HuggingFaceH4/MATH-500 split test"
    gsm8k = QuestionSource("gsm8k", dataset_split="train")
    assert gsm8k.describe()["description"] == "Hub openai/gsm8k split train (fields of preset gsm8k)"
    assert (gsm8k.dataset_config, gsm8k.dataset_split) == ("main", "train")
    plain = QuestionSource("some/dataset")
    assert (plain.dataset_split, plain.question_field, plain.answer_field) == ("train", "question", "answer")
