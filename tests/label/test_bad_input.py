"""`ssb-trl label`'s bad input (issue 30) and papercuts (issue 29 item 9): each is one line naming what is wrong
and the fix, before any work where it can be known then, and no work lost. Real SmolLM2 tokenizer, tiny real
models, the digit model of tests/helpers.py, and conftest's fake `vllm serve` (`fake_server`).
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch

from ssb_trl import cli
from ssb_trl.label.config import LabelConfig
from ssb_trl.label.job import LabelJob, label_dataset
from ssb_trl.models import BUNDLED_MODEL, load_tokenizer
from ssb_trl.prepare import PrepConfig, prepare_ssb_data
from ssb_trl.scripts.inspect_data import soft_label_statistics
from ssb_trl.scripts.label import make_parser
from ssb_trl.soft_labels.checks import check_sampled_tokens_in_top_k
from ssb_trl.soft_labels.io import load_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelMetadata
from tests.helpers import GOLDS, ROWS, make_digit_model, small_config, user, write_questions, write_rows
from tests.helpers import label_config as config

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")


def prompts(tmp_path, count: int = 3):
    return write_rows(tmp_path / "prompts.jsonl", [{"prompt": user(f"Pick a digit ({i}).")} for i in range(count)])


def test_a_shard_whose_rows_lost_their_arrow_file_is_named_before_any_work(tmp_path, tiny) -> None:  # noqa: F811
    model, tokenizer = tiny
    data = write_rows(tmp_path / "in.jsonl", ROWS[:3])
    label_dataset(config(tmp_path, data, shard_size=1), model, tokenizer, show_progress=False)
    work = LabelJob.work_dir(tmp_path / "out")
    (arrow,) = work.shard_path("rows", 1).glob("*.arrow")
    arrow.unlink()
    stamps = {path: path.stat().st_mtime_ns for path in work.root.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=rf"{work.shard_path('rows', 1)} lacks its data file\(s\) \['{arrow.name}'\]"
                       r"\nDelete them and rerun with the same settings: only those shards are redone"):  # fmt: skip
        label_dataset(config(tmp_path, data, shard_size=1), model, tokenizer, show_progress=False)
    assert {path: path.stat().st_mtime_ns for path in work.root.rglob("*") if path.is_file()} == stamps


def test_push_to_hub_offline_is_refused_before_any_work_in_label_and_prepare(tmp_path, tiny) -> None:  # noqa: F811
    """The upload failed after the whole run, with huggingface_hub's OfflineModeIsEnabled traceback."""
    model, tokenizer = tiny
    hub = {"push_to_hub": True, "hub_dataset_id": "me/labelled"}
    with pytest.raises(ValueError, match=r"--push_to_hub uploads to the Hugging Face Hub, but offline mode is on"):
        label_dataset(config(tmp_path, write_rows(tmp_path / "in.jsonl", ROWS[:1]), **hub), model, tokenizer)
    assert not (tmp_path / "out").exists()
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:3])
    with pytest.raises(ValueError, match=r"--push_to_hub uploads to the Hugging Face Hub, but offline mode is on"):
        prepare_ssb_data(small_config(tmp_path, questions, output_dir=str(tmp_path / "prep"), **hub),
                         model=make_digit_model(tokenizer), tokenizer=tokenizer)  # fmt: skip
    assert not (tmp_path / "prep").exists()


@NO_GPU
def test_device_cuda_without_a_gpu_leaves_nothing_behind(tmp_path, tokenizer) -> None:
    """It was refused once the model loaded, after settings.json had been written."""
    data = write_rows(tmp_path / "in.jsonl", ROWS[:1])
    with pytest.raises(ValueError, match=r"--device 'cuda' asks for a CUDA GPU, and this machine has none"):
        label_dataset(config(tmp_path, data, teacher_model_name_or_path=BUNDLED_MODEL, device="cuda"))
    assert not (tmp_path / "out").exists()
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:3])
    with pytest.raises(ValueError, match=r"--device 'cuda' asks for a CUDA GPU"):
        prepare_ssb_data(small_config(tmp_path, questions, model_name_or_path=BUNDLED_MODEL, device="cuda"))
    assert not (tmp_path / "out").exists()


def test_a_server_serving_another_model_names_labels_teacher_flag(tmp_path, fake_server, tokenizer_dir) -> None:  # noqa: F811
    """It named --model_name_or_path, a flag `ssb-trl label` does not have."""
    url, _ = fake_server
    tokenizer = load_tokenizer(tokenizer_dir)
    settings = {"teacher_model_name_or_path": "org/my-teacher", "vllm_server_base_url": url}
    with pytest.raises(
        ValueError, match=r"not the configured model 'org/my-teacher' \(--teacher_model_name_or_path,"
    ) as error:
        label_dataset(config(tmp_path, prompts(tmp_path), **settings), make_digit_model(tokenizer), tokenizer)
    assert "--model_name_or_path" not in str(error.value).replace("--teacher_model_name_or_path", "")
    # At train time, answers that are not the teacher's (another model served them) name the command that made them.
    metadata = SoftLabelMetadata("org/my-teacher", {}, 8, 2.0, source={"kind": "ssb-trl label",
                                 "teacher_sampling": {"temperature": 0.0, "top_k": 0}})  # fmt: skip
    with pytest.raises(ValueError, match="`ssb-trl label` does this") as error:
        check_sampled_tokens_in_top_k(np.full(20, 7), np.zeros((20, 8), dtype=np.int64), np.array([20]), metadata)
    assert "ssb-trl prepare" not in str(error.value)


def test_float16_logprobs_at_a_tiny_temperature_keep_the_generated_completions(tmp_path, tokenizer_dir) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    teacher, data = make_digit_model(tokenizer), prompts(tmp_path)
    settings = {"teacher_max_new_tokens": 4, "soft_label_temperature": 1e-6}
    with pytest.raises(ValueError, match=r"row 'train/0': a teacher log-prob of .* does not fit float16 .* Store "
                       r"--logprob_dtype float32"):  # fmt: skip
        label_dataset(config(tmp_path, data, logprob_dtype="float16", **settings), teacher, tokenizer)
    completions = LabelJob.work_dir(tmp_path / "out").shard_path("completions", 0)
    generated_at = completions.stat().st_mtime_ns  # the teacher's completions were kept
    summary = label_dataset(config(tmp_path, data, **settings), teacher, tokenizer, show_progress=False)  # float32
    assert summary.rows_written == 3 and completions.stat().st_mtime_ns == generated_at


@pytest.mark.parametrize("setting", ["generation_batch_size", "generation_max_batch_tokens"])
@pytest.mark.parametrize("value", [0, -1])
def test_generation_batch_limits_below_one_are_refused_in_label_and_prepare(tmp_path, setting, value) -> None:
    message = rf"{setting} must be >= 1 \(or unset for the default\), got {value}"
    with pytest.raises(ValueError, match=message):
        LabelConfig(dataset_name="d.jsonl", teacher_model_name_or_path="t", **{setting: value})
    with pytest.raises(ValueError, match=message):
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="m", **{setting: value})


def test_a_numeric_answer_is_kept_as_written(tmp_path, tiny) -> None:  # noqa: F811
    """`"answer": 42` was stored as ''."""
    model, tokenizer = tiny
    data = tmp_path / "in.jsonl"
    lines = [
        '{"prompt": "What is 6 x 7?", "completion": "42", "answer": 42}',
        '{"prompt": "A big one?", "completion": "Yes", "answer": 123456789012345678901234567890}',
        '{"prompt": "A decimal?", "completion": "Yes", "answer": 1.50}',
        '{"prompt": "None?", "completion": "No"}',
    ]
    data.write_text("\n".join(lines) + "\n")
    label_dataset(config(tmp_path, data), model, tokenizer, show_progress=False)
    dataset, _ = load_soft_label_dataset(str(tmp_path / "out"))
    assert dataset["answer"] == ["42", "123456789012345678901234567890", "1.50", ""]
    data.write_text('{"prompt": "Hi", "completion": "Hello", "answer": ["a", "b"]}\n')
    with pytest.raises(ValueError, match=r"row 'train/0': 'answer' is \['a', 'b'\]; .* as text"):
        label_dataset(config(tmp_path, data, output_dir=str(tmp_path / "list")), model, tokenizer)


def test_a_student_with_the_vocabulary_but_another_chat_template_is_refused(tmp_path, tiny, tokenizer_dir) -> None:  # noqa: F811
    model, tokenizer = tiny
    student_dir = tmp_path / "student"
    student = load_tokenizer(tokenizer_dir)
    student.chat_template = student.chat_template.replace("<|im_start|>", "<|im_start|> ")
    student.save_pretrained(student_dir)
    data = write_rows(tmp_path / "in.jsonl", ROWS[:1])
    with pytest.raises(ValueError, match=rf"the student '{student_dir}' has the vocabulary of the teacher "
                       r"'tiny-teacher' but another chat template \(student: [0-9a-f]{12}, teacher: [0-9a-f]{12}"):  # fmt: skip
        label_dataset(config(tmp_path, data, student_model_name_or_path=str(student_dir)), model, tokenizer)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["label", "prepare"])
def test_num_processes_on_a_cpu_runs_that_many_processes(command, tmp_path, capsys, monkeypatch) -> None:
    """`--num_processes 2` on a CPU ran one process without a word; now two run, as with --accelerate_config
    multi_gpu (both jobs alike); a launch naming its own mode is left to accelerate."""
    from accelerate.commands.launch import launch_command_parser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no default accelerate config of the user's

    def launch(*flags: str) -> argparse.Namespace:
        namespace = launch_command_parser().parse_args([*flags, "script.py"])
        cli._processes_on_cpu(f"ssb-trl {command}", namespace)
        return namespace

    assert launch("--num_processes", "2").multi_gpu is True
    assert "2 processes on the CPU (torchrun over gloo" in capsys.readouterr().err
    assert launch("--num_processes", "1").multi_gpu is False
    assert launch("--num_processes", "2", "--use_deepspeed").multi_gpu is False
    single = tmp_path / "single.yaml"
    single.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 2\n")
    assert launch("--config_file", str(single)).multi_gpu is True
    assert command in cli.SHARDED_COMMANDS


# ------------------------------------------------------------------------------------------- papercuts (issue 29)


def test_label_help_names_only_flags_label_has() -> None:
    """It named --model_name_or_path (in --vllm_server_model's help), a flag of prepare."""
    parser = make_parser(prog="ssb-trl label")
    flags = {option for action in parser._actions for option in action.option_strings}
    text = re.sub(r"(--[a-z_]+)-\s+", r"\1", " ".join(parser.format_help().split()))  # undo argparse's wrapping
    named = {flag for flag in re.findall(r"--[a-z][a-z0-9_]*(?![a-z0-9_-])", text)}
    assert named <= flags, named - flags
    assert "--teacher_model_name_or_path" in parser.format_help().split("--vllm_server_model")[-1]


def test_label_summary_and_inspect_report_the_same_bytes_per_answer_token(tmp_path, tiny) -> None:  # noqa: F811
    """The summary counted the data-*.arrow files, inspect every file of the folder (its JSON metadata too)."""
    model, tokenizer = tiny
    summary = label_dataset(config(tmp_path, write_rows(tmp_path / "in.jsonl", ROWS)), model, tokenizer,
                            show_progress=False)  # fmt: skip
    dataset, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    stats = soft_label_statistics(dataset, metadata, str(tmp_path / "out"))
    assert stats["answer_tokens"] == summary.answer_tokens
    assert stats["bytes_per_answer_token"]["on_disk"] == pytest.approx(summary.bytes_per_answer_token)
    assert summary.dataset_bytes == sum(path.stat().st_size for path in (tmp_path / "out").glob("data-*.arrow"))
