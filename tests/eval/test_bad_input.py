"""`ssb-trl evaluate`'s bad input (issues 10 and 30): settings, output folders, source names, model entries, and
what the results say of a local file or folder. Evaluation runs use conftest's tiny random Llama saved as a model
folder (real tokenizer, generation and grading). Bad question files are in tests/tasks/test_bad_sources.py.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from ssb_trl.eval import EvalConfig, EvaluationDataError, load_eval_questions, run_evaluation
from ssb_trl.eval.model_specs import parse_model_specs
from ssb_trl.scripts import evaluate as evaluate_script

RG = "reasoning_gym:basic_arithmetic"


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


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


def test_evaluate_without_a_plot_does_not_say_it_wrote_one(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ssb_trl.scripts import evaluate as evaluate_script

    out = tmp_path / "eval"
    argv = ["--models", tiny_model_dir, "--dataset_name", RG, "--num_questions", "2", "--max_new_tokens", "4"]
    argv += ["--output_dir", str(out), "--no_plot"]
    evaluate_script.main(*evaluate_script.make_parser().parse_args_and_config(argv))
    written = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Results written")]
    assert written == [f"Results written to {out}/ (results.json, results.md, models/)"]
    assert not (out / "accuracy.png").exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("a b=dir", r"the label 'a b' may hold only letters, digits and _ \. \+ -"),
        ("a=", r"names no model after '='"),
        ("a=b=dir", r"has more than one '='"),
        ("a b", r"'a b' is neither an existing local path nor a Hub id"),
    ],
)
def test_model_entries_of_neither_form_are_refused_as_such(entry: str, message: str) -> None:
    """Each failed later with the Hub's 'Repo id must use alphanumeric chars' about the whole entry."""
    with pytest.raises(ValueError, match=message) as error:
        parse_model_specs([entry])
    assert "write 'label=name_or_path'" in str(error.value) and "Repo id" not in str(error.value)
