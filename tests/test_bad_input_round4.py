"""Bad input, round 4 (issue 30): data files without rows, a GPU the machine lacks, misleading messages, meaningless
settings and silently ignored splits. Each case asserts the one-line message a user sees, with real tokenizers,
tiny real models and the bigram "digit model" of test_pipeline.py.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import build_soft_label_dataset, make_tiny_model
from test_pipeline import GOLDS, make_digit_model, small_config, write_questions

from ssb_trl.eval import EvalConfig
from ssb_trl.eval.model_specs import parse_model_specs
from ssb_trl.generation.transformers_engine import TransformersBackend
from ssb_trl.prepare import NoPairsError, PrepConfig, prepare_ssb_data
from ssb_trl.soft_labels.io import save_soft_label_dataset
from ssb_trl.tasks.prompts import load_hint_format
from ssb_trl.tasks.sources import QuestionSource, load_questions

RG = "reasoning_gym:basic_arithmetic"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny") / "tiny-full"
    make_tiny_model(seed=0).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------------------- 7. raw tracebacks


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


@NO_GPU
def test_device_cuda_without_a_gpu_is_refused_in_prepare_and_evaluate(
    tmp_path: Path, tokenizer, tiny_model_dir: str
) -> None:
    """torch's AssertionError 'Torch not compiled with CUDA enabled', with its traceback."""
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:3])
    make_digit_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    config = small_config(tmp_path, questions, model_name_or_path=str(tmp_path / "model"), device="cuda")
    with pytest.raises(ValueError, match=r"--device 'cuda' asks for a CUDA GPU, and this machine has none"):
        prepare_ssb_data(config, show_progress=False)
    # Nothing was recorded that would stand in the way: the same run on the CPU goes through.
    cpu = small_config(tmp_path, questions, model_name_or_path=str(tmp_path / "model"), device="cpu")
    assert prepare_ssb_data(cpu, show_progress=False).questions == 3
    with pytest.raises(ValueError, match=r"--device 'cuda:0' asks for a CUDA GPU.*pass --device cpu"):
        EvalConfig(models=[tiny_model_dir], dataset_name=RG, num_questions=2, device="cuda:0")
    with pytest.raises(ValueError, match=r"--device 'gpu' is not a device"):
        EvalConfig(models=[tiny_model_dir], dataset_name=RG, num_questions=2, device="gpu")


# ------------------------------------------------------------------------------------- 8. misleading messages


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


def test_a_teacher_that_keeps_nothing_reports_one_yield(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    """The error said 'teacher yield 0/0' (kept / pairs) and the summary '0 / 6' (kept / questions asked)."""
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:6])
    config = small_config(
        tmp_path, questions, teacher_hint="answer_only", teacher_unpaired_questions=True, teacher_max_new_tokens=1
    )
    with caplog.at_level(logging.WARNING), pytest.raises(NoPairsError) as error:
        prepare_ssb_data(config, model=make_digit_model(tokenizer), tokenizer=tokenizer, show_progress=False)
    table = re.search(r"teacher yield \(questions asked with a kept answer\)\s+0 / (\d+)", _messages(caplog))
    assert table is not None
    assert f"teacher yield 0/{table.group(1)} (questions asked with a kept answer)" in str(error.value)
    assert table.group(1) == "6"


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


@pytest.mark.parametrize("config", [QuestionSource, EvalConfig, PrepConfig])
def test_an_unknown_reasoning_gym_task_is_named_before_num_questions(config) -> None:
    """It asked for --num_questions first; given one, it then said the task does not exist."""
    kwargs = {"models": ["m"]} if config is EvalConfig else {"model_name_or_path": "m"} if config is PrepConfig else {}
    with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'no_such_task'; examples of valid tasks"):
        config(dataset_name="reasoning_gym:no_such_task", **kwargs)


# ------------------------------------------------------------------------------- 9. accepted although meaningless


@pytest.mark.parametrize(
    ("setting", "value"), [("generation_max_batch_tokens", -5), ("generation_max_batch_tokens", 0)]
)
def test_generation_batch_limits_must_be_positive(tmp_path: Path, tokenizer, setting: str, value: int) -> None:
    """--generation_max_batch_tokens -5 was accepted, and logged as 'at most -5 tokens'."""
    with pytest.raises(ValueError, match=rf"{setting} must be >= 1"):
        small_config(tmp_path, tmp_path / "q.jsonl", **{setting: value})
    model = make_digit_model(tokenizer)
    with pytest.raises(
        ValueError, match=r"generation_max_batch_tokens must be >= 1 \(or unset for the default\), got"
    ):
        TransformersBackend(model, tokenizer, max_batch_tokens=value)
    with pytest.raises(ValueError, match=r"generation_batch_size must be >= 1 \(or unset for the default\), got -1"):
        TransformersBackend(model, tokenizer, max_batch_size=-1)


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


# ------------------------------------------------------------------------------------------------ 10. silent


def test_inspect_of_a_split_a_one_split_folder_lacks_is_refused(tmp_path: Path, tokenizer, tokenizer_dir: str) -> None:
    """`ssb-trl inspect --split test` showed the train rows as if they were the test split."""
    from ssb_trl.scripts.inspect_data import InspectArguments, main

    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=4, top_k=8)
    save_soft_label_dataset(dataset, str(tmp_path / "data"), metadata)
    arguments = {"dataset_name": str(tmp_path / "data"), "tokenizer_name_or_path": tokenizer_dir}
    with pytest.raises(
        ValueError, match=r"holds one split, read as 'train'; it has no split 'test'.*--dataset_split.* and inspect"
    ):
        main(InspectArguments(**arguments, dataset_split="test"))
    assert main(InspectArguments(**arguments))["rows"] == 4


def test_a_split_asked_of_a_single_file_is_refused(tmp_path: Path) -> None:
    """--dataset_split test on one .jsonl file read the file as if it were the test split."""
    path = write_questions(tmp_path / "q.jsonl", GOLDS[:3])
    with pytest.raises(ValueError, match=r"is a single file, which holds one split, read as 'train'; it has no split"):
        load_questions(QuestionSource(dataset_name=str(path), dataset_split="test"))
    assert len(load_questions(QuestionSource(dataset_name=str(path), dataset_split="train"))) == 3
