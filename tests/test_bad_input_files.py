"""Bad input, files and evaluation (issue 10): question files that are empty, not UTF-8, broken, overlong or
lack the split; evaluation settings, output folders and source names. Evaluation runs use a tiny random Llama
saved as a model folder (real tokenizer, generation and grading).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from conftest import make_tiny_model

from ssb_trl.eval import EvalConfig, EvaluationDataError, load_eval_questions, run_evaluation
from ssb_trl.scripts import evaluate as evaluate_script
from ssb_trl.tasks.sources import QuestionSource, load_questions

RG = "reasoning_gym:basic_arithmetic"


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------------------------ question files


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


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny") / "tiny-full"
    make_tiny_model(seed=0).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return str(path)


def test_evaluation_refuses_non_finite_and_absurd_numbers(tiny_model_dir: str, tmp_path: Path) -> None:
    # sampling_temperature is unused without num_samples, so Sampling never checked it; the config does.
    with pytest.raises(ValueError, match="finite numbers, got sampling_temperature=nan"):
        EvalConfig(models=["m"], dataset_name=RG, num_questions=2, sampling_temperature=math.nan)
    with pytest.raises(ValueError, match="sampling_top_p=nan"):
        evaluate_script.make_parser().parse_args_and_config(
            ["--models", "m", "--dataset_name", RG, "--num_questions", "2", "--sampling_top_p", "nan"]
        )
    config = EvalConfig(
        models=[tiny_model_dir], dataset_name=RG, num_questions=2, max_new_tokens=10**9, output_dir=str(tmp_path / "o")
    )
    with pytest.raises(ValueError, match=r"max_new_tokens=1000000000 .* context window is 2048 positions"):
        run_evaluation(config)
    assert not (tmp_path / "o").exists()


def test_evaluation_output_dir_that_is_a_file_fails_before_any_model_runs(
    tiny_model_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("keep me")
    config = EvalConfig(
        models=[tiny_model_dir], dataset_name=RG, num_questions=2, max_new_tokens=4, output_dir=str(a_file)
    )
    with caplog.at_level(logging.INFO), pytest.raises(ValueError, match=r"output_dir '.*results' is a file"):
        run_evaluation(config)
    assert not any(record.getMessage().startswith("Loading model") for record in caplog.records)
    assert a_file.read_text() == "keep me"


def test_results_of_a_local_file_or_folder_say_so(tiny_model_dir: str, tmp_path: Path) -> None:
    data = tmp_path / "two.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n')
    out = tmp_path / "eval"
    run_evaluation(EvalConfig(models=[tiny_model_dir], dataset_name=str(data), max_new_tokens=4, output_dir=str(out)))
    benchmark = json.loads((out / "results.json").read_text())["benchmark"]
    assert benchmark["kind"] == "local file" and benchmark["description"] == f"local file {data}"
    assert (benchmark["rows_available"], benchmark["evaluated"]) == (2, 2)
    assert f"### local file {data}: 2 questions" in (out / "results.md").read_text()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "test.jsonl").write_text(data.read_text())
    _, source = load_eval_questions(EvalConfig(models=["m"], dataset_name=str(folder), dataset_split="test"))
    assert source["kind"] == "local folder" and source["description"] == f"local folder {folder} (split test)"


def test_source_errors_list_the_presets_and_the_offline_route(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        evaluate_script.make_parser().parse_args_and_config(["--benchmark", "math500", "--models", "m"])
    err = capsys.readouterr().err
    assert "--benchmark is now --dataset_name: a benchmark preset (gsm8k, math500, aime2024, aime2024_maxwell)" in err
    assert "local .jsonl/.json/.parquet/.csv file or dataset folder (the route that works offline)" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(EvaluationDataError) as error:
        load_eval_questions(EvalConfig(models=["m"], dataset_name="math50"))
    assert "'math50' is not a benchmark preset (gsm8k, math500, aime2024, aime2024_maxwell)" in str(error.value)
    assert "offline: copy the dataset as a file, e.g. --dataset_name questions.jsonl" in str(error.value)
    with pytest.raises(EvaluationDataError, match=r"offline, download it elsewhere .* --dataset_name math500\.jsonl "):
        load_eval_questions(EvalConfig(models=["m"], dataset_name="math500"))
