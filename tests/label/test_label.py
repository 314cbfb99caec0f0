"""`ssb-trl label`: any teacher's soft labels on a prompt/completion dataset, for offline distillation.

The bundled SmolLM2-135M labels a few short rows (checked against its dense full-vocabulary log-softmax) and a
smaller student of the same tokenizer trains on them; resumption, the teacher writing completions, the 2-process
split and the refusals run on tiny models built from a config with the real SmolLM2 tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.cli import COMMANDS, LAUNCHED_COMMANDS
from ssb_trl.label.config import LabelConfig
from ssb_trl.label.job import LabelJob, label_dataset
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer, load_tokenizer
from ssb_trl.scripts import train as train_script
from ssb_trl.scripts.label import make_parser
from ssb_trl.soft_labels.io import load_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelError, tokenizer_fingerprint
from ssb_trl.tasks.prompts import chat_prompt_ids
from tests.helpers import (
    LABEL_TEMPERATURE,
    LABEL_TOP_K,
    ROWS,
    assistant,
    dense_topk,
    make_digit_model,
    make_tiny_model,
    user,
    write_rows,
)
from tests.helpers import label_config as config

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


REPO = Path(__file__).resolve().parents[2]
T, K = LABEL_TEMPERATURE, LABEL_TOP_K  # the soft-label settings of helpers.label_config


@pytest.fixture(scope="module")
def bundled():
    return load_model_and_tokenizer(BUNDLED_MODEL, dtype="float32", device="cpu")


def args(tmp_path: Path, **overrides) -> SSBConfig:
    settings = dict(
        output_dir=str(tmp_path / "student"), per_device_train_batch_size=2, max_steps=2, logging_steps=1,
        learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no", bf16=False, temperature=T, seed=0,
    )  # fmt: skip
    settings.update(overrides)
    return SSBConfig(**settings)


def test_bundled_teacher_labels_match_the_dense_reference_and_a_smaller_student_trains(tmp_path, bundled):
    model, tokenizer = bundled
    rows = [dict(row) for row in ROWS]
    hinted = user("What is 2 + 3? Hint: the answer is 5.")
    rows[0]["teacher_prompt"] = hinted  # the teacher sees a hint; the student's row keeps the bare question
    data = write_rows(tmp_path / "in.jsonl", rows)
    summary = label_dataset(
        config(tmp_path, data, teacher_model_name_or_path=BUNDLED_MODEL), model, tokenizer, show_progress=False
    )
    assert (summary.rows_written, summary.shards_done, summary.shards_reused) == (4, [0, 1], [])
    dataset, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    assert metadata.teacher_model == BUNDLED_MODEL and (metadata.top_k, metadata.temperature) == (K, T)
    assert metadata.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer)
    assert metadata.source["teacher_sees_student_prompt"] is False
    assert metadata.source["completions"] == "the dataset's" and "teacher_sampling" not in metadata.source

    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for index, row in enumerate(dataset):
        student_prompt = chat_prompt_ids(tokenizer, ROWS[index]["prompt"])
        completion = tokenizer(ROWS[index]["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == [*student_prompt, *completion, end_of_turn]
        assert row["completion_mask"] == [0] * len(student_prompt) + [1] * (len(completion) + 1)
        assert row["prompt"] == ROWS[index]["prompt"] and row["completion"] == ROWS[index]["completion"]
        teacher_prompt = chat_prompt_ids(tokenizer, rows[index].get("teacher_prompt") or rows[index]["prompt"])
        ids, values = dense_topk(model, [*teacher_prompt, *completion, end_of_turn], len(teacher_prompt))
        assert torch.equal(torch.tensor(row["teacher_topk_ids"]), ids), index
        torch.testing.assert_close(torch.tensor(row["teacher_topk_logprobs"]), values, atol=1e-4, rtol=0)
    # The hint changes the teacher's distribution: row 0's labels are not those of the bare question.
    bare = chat_prompt_ids(tokenizer, ROWS[0]["prompt"])
    _, bare_values = dense_topk(model, dataset[0]["input_ids"], len(bare))
    assert not torch.allclose(torch.tensor(dataset[0]["teacher_topk_logprobs"]), bare_values, atol=1e-3)

    student = make_tiny_model(seed=0, hidden_size=32, num_layers=2)  # SmolLM2's vocabulary, a fraction of its size
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in model.parameters()) / 50
    trainer = SSBTrainer(student, args=args(tmp_path), train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_plain_strings_are_one_user_and_one_assistant_message(tmp_path, tiny):
    model, tokenizer = tiny
    conversational = write_rows(tmp_path / "chat.jsonl", ROWS[:2])
    plain = write_rows(tmp_path / "plain.jsonl", [
        {"prompt": row["prompt"][0]["content"], "completion": row["completion"][0]["content"]} for row in ROWS[:2]
    ])  # fmt: skip
    label_dataset(
        config(tmp_path, conversational, output_dir=str(tmp_path / "a")), model, tokenizer, show_progress=False
    )
    label_dataset(config(tmp_path, plain, output_dir=str(tmp_path / "b")), model, tokenizer, show_progress=False)
    assert (
        load_soft_label_dataset(str(tmp_path / "a"))[0].to_list()
        == load_soft_label_dataset(str(tmp_path / "b"))[0].to_list()
    )


def test_a_rerun_skips_finished_shards_and_redoes_what_changed(tmp_path, tiny, caplog):
    model, tokenizer = tiny
    data = write_rows(tmp_path / "in.jsonl", ROWS[:3])
    first = label_dataset(config(tmp_path, data, shard_size=1), model, tokenizer, show_progress=False)
    assert first.shards_done == [0, 1, 2]
    expected = load_soft_label_dataset(str(tmp_path / "out"))[0].to_list()
    work = LabelJob.work_dir(tmp_path / "out")
    kept = {shard: work.shard_path("rows", shard).stat().st_ino for shard in (0, 2)}
    work.remove("rows", 1)  # as if the run had stopped before shard 1

    again = label_dataset(config(tmp_path, data, shard_size=1), model, tokenizer, show_progress=False)
    assert (again.shards_done, again.shards_reused) == ([1], [0, 2])
    assert {shard: work.shard_path("rows", shard).stat().st_ino for shard in (0, 2)} == kept
    assert load_soft_label_dataset(str(tmp_path / "out"))[0].to_list() == expected

    with caplog.at_level(logging.WARNING, logger="ssb_trl.label.job"):
        compact = label_dataset(
            config(tmp_path, data, shard_size=1, logprob_dtype="uint8"), model, tokenizer, show_progress=False
        )
    assert compact.shards_done == [0, 1, 2] and "logprob_dtype: 'float32' -> 'uint8'" in caplog.text
    dataset, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    assert metadata.logprob_dtype == "uint8" and metadata.format_version == 2
    for row, old in zip(dataset, expected):
        assert row["teacher_topk_ids"] == old["teacher_topk_ids"]
        codes = torch.tensor(row["teacher_topk_logprobs"], dtype=torch.float32)
        torch.testing.assert_close(-codes / 16, torch.tensor(old["teacher_topk_logprobs"]), atol=1 / 32, rtol=0)

    edited = [dict(row) for row in ROWS[:3]]
    edited[2]["completion"] = assistant("Eight.")
    write_rows(data, edited)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssb_trl.label.job"):
        redone = label_dataset(
            config(tmp_path, data, shard_size=1, logprob_dtype="uint8"), model, tokenizer, show_progress=False
        )
    assert (redone.shards_done, redone.shards_reused) == ([2], [0, 1]) and "shard(s) [2]" in caplog.text
    assert load_soft_label_dataset(str(tmp_path / "out"))[0][2]["completion"] == assistant("Eight.")


def test_sampled_labels_are_draws_seeded_per_row_and_a_mode_switch_redoes_only_them(tmp_path, tiny):
    """--soft_label_mode sampled: N draws per token, reproducible (seeded per row id, whatever the shard), recorded
    in the metadata; switching modes redoes the soft labels of every shard and keeps the rows otherwise."""
    model, tokenizer = tiny
    data = write_rows(tmp_path / "in.jsonl", ROWS[:3])
    sampled = {"soft_label_mode": "sampled", "soft_label_draws": 6, "logprob_dtype": "uint8"}
    label_dataset(config(tmp_path, data, shard_size=1, **sampled), model, tokenizer, show_progress=False)
    dataset, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    assert (metadata.soft_label_mode, metadata.soft_label_draws, metadata.top_k) == ("sampled", 6, 6)
    assert metadata.format_version == 3
    for row in dataset:
        codes = torch.tensor(row["teacher_topk_logprobs"], dtype=torch.float32)
        mass = (-codes / 16).exp().sum(-1)  # the draws' shares, rounded up: at least 1, never less
        assert codes.shape[-1] == 6 and bool((mass >= 1 - 1e-6).all()) and bool((mass < 1.1).all())
    label_dataset(
        config(tmp_path, data, shard_size=3, output_dir=str(tmp_path / "again"), **sampled),
        model,
        tokenizer,
        show_progress=False,
    )
    assert load_soft_label_dataset(str(tmp_path / "again"))[0].to_list() == dataset.to_list()

    topk = label_dataset(
        config(tmp_path, data, shard_size=1, logprob_dtype="uint8"), model, tokenizer, show_progress=False
    )
    assert topk.shards_done == [0, 1, 2]
    relabelled, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    assert (metadata.soft_label_mode, metadata.top_k) == ("topk", K)
    assert relabelled["input_ids"] == dataset["input_ids"]


def test_the_teacher_writes_missing_completions_and_keeps_them(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    teacher = make_digit_model(tokenizer)  # after the assistant header it writes one digit, then ends its turn
    data = write_rows(tmp_path / "prompts.jsonl", [{"prompt": user(f"Pick a digit ({i}).")} for i in range(3)])
    settings = {"teacher_max_new_tokens": 4, "teacher_model_name_or_path": "digit-teacher"}
    summary = label_dataset(config(tmp_path, data, **settings), teacher, tokenizer, show_progress=False)
    assert (summary.rows_written, summary.completions_generated, summary.completions_cut) == (3, 3, 0)
    dataset, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    assert metadata.source["completions"] == "generated by the teacher"
    assert metadata.source["teacher_sampling"]["temperature"] == 0.0  # greedy by default
    assert {row["completion"][0]["content"] for row in dataset} <= {"1", "2", "3"}
    assert all(row["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") for row in dataset)
    completions = LabelJob.work_dir(tmp_path / "out").shard_path("completions", 0)
    generated_at = completions.stat().st_mtime_ns

    with pytest.raises(
        ValueError,
        match=r"different settings \(teacher_temperature: 0.0 -> 0.7\)\. These determine the completions the teacher",
    ):
        label_dataset(config(tmp_path, data, teacher_temperature=0.7, **settings), teacher, tokenizer)
    label_dataset(config(tmp_path, data, soft_label_top_k=4, **settings), teacher, tokenizer, show_progress=False)
    assert completions.stat().st_mtime_ns == generated_at  # new soft labels, the same completions
    assert load_soft_label_dataset(str(tmp_path / "out"))[1].top_k == 4

    with pytest.raises(ValueError, match="3 cut at teacher_max_new_tokens=1"):  # a digit, never its end of turn
        label_dataset(
            config(tmp_path, data, output_dir=str(tmp_path / "cut"), teacher_max_new_tokens=1,
                   truncated_completions="drop"), teacher, tokenizer,
        )  # fmt: skip


def test_a_folder_labelled_before_the_run_engine_resumes_and_trains(tmp_path, tokenizer_dir):
    """A work folder written before `label` ran on the job engine (settings in the old layout: the teacher with its
    own 16-digit tokenizer digest, the student's digest, the rows' digests under "input") resumes without redoing
    the teacher's completions or the soft labels, its settings are rewritten in today's layout, and it trains."""
    from ssb_trl.jobs.identity import legacy_tokenizer_digest

    tokenizer = load_tokenizer(tokenizer_dir)
    teacher = make_digit_model(tokenizer)
    data = write_rows(tmp_path / "prompts.jsonl", [{"prompt": user(f"Pick a digit ({i}).")} for i in range(3)])
    settings = {"teacher_max_new_tokens": 4, "teacher_model_name_or_path": "digit-teacher"}
    label_dataset(config(tmp_path, data, **settings), teacher, tokenizer, show_progress=False)
    work = LabelJob.work_dir(tmp_path / "out")
    recorded = json.loads(work.settings_path.read_text())
    old_digest = legacy_tokenizer_digest(tokenizer)
    legacy = {
        "kind": "ssb-trl label",
        "config": recorded["config"],
        "teacher": {**{k: v for k, v in recorded["identities"]["teacher"].items() if k != "tokenizer_sha256"},
                    "tokenizer": old_digest},
        "student_tokenizer": old_digest,
        "input": recorded["inputs"],
    }  # fmt: skip
    work.settings_path.write_text(json.dumps(legacy))
    stamps = {path: path.stat().st_mtime_ns for path in work.root.glob("*/shard-*")}
    dataset = load_soft_label_dataset(str(tmp_path / "out"))[0].to_list()
    label_dataset(config(tmp_path, data, **settings), teacher, tokenizer, show_progress=False)
    assert {path: path.stat().st_mtime_ns for path in work.root.glob("*/shard-*")} == stamps
    upgraded = json.loads(work.settings_path.read_text())
    assert upgraded["identities"]["teacher"] == recorded["identities"]["teacher"]
    assert upgraded["inputs"] == recorded["inputs"] and upgraded["config"] == recorded["config"]
    assert load_soft_label_dataset(str(tmp_path / "out"))[0].to_list() == dataset
    student = make_tiny_model(vocab_size=len(tokenizer))
    train_dataset, _ = load_soft_label_dataset(str(tmp_path / "out"))
    trainer = SSBTrainer(model=student, args=args(tmp_path), train_dataset=train_dataset, processing_class=tokenizer)
    assert math.isfinite(trainer.train().training_loss)


def test_bad_input_is_refused_naming_the_row_and_the_fix(tmp_path, tiny):
    model, tokenizer = tiny

    def run(rows, **overrides):
        data = write_rows(tmp_path / "bad.jsonl", rows)
        label_dataset(config(tmp_path, data, **overrides), model, tokenizer, show_progress=False)

    with pytest.raises(
        ValueError, match=r"neither a 'prompt' nor a 'messages' column; its columns are \['question', 'answer'\]"
    ):
        run([{"question": "2 + 2?", "answer": "4"}])
    with pytest.raises(ValueError, match=r"a 'messages' column and \['prompt'\]: the prompt and completion would be"):
        run([{"messages": [*user("Hi"), *assistant("Hello")], "prompt": "Hi"}])
    with pytest.raises(ValueError, match=r"1 row\(s\) .* have an empty completion \(first: \['train/1'\]\)"):
        run([ROWS[0], {"prompt": user("Hi"), "completion": assistant("  ")}])
    with pytest.raises(ValueError, match="row 'train/0': 'completion' holds 2 messages"):
        run([{"prompt": user("Hi"), "completion": [*assistant("Hello"), *assistant("again")]}])
    with pytest.raises(
        ValueError, match=r"1 row\(s\) are longer than max_length=40 .*first: \['train/1 \(\d+ tokens\)'\]"
    ):
        run([ROWS[1], {"prompt": user("Tell me a long story " * 5), "completion": assistant("Once")}], max_length=40)
    assert not (tmp_path / "out").exists()  # refused before anything was written

    with torch.no_grad():
        model.get_output_embeddings().weight[7] = float("nan")
    with pytest.raises(ValueError, match="row 'train/0': the teacher's log-probs are NaN or infinite"):
        run(ROWS[:1], output_dir=str(tmp_path / "nan"))


def test_a_student_with_another_tokenizer_is_refused_when_labelling_and_when_training(tmp_path, tiny, tokenizer_dir):
    model, tokenizer = tiny
    student_dir = tmp_path / "student-model"
    other = load_tokenizer(tokenizer_dir)
    other.add_tokens(["<student_only_token>"])
    other.save_pretrained(student_dir)
    data = write_rows(tmp_path / "in.jsonl", ROWS[:2])
    with pytest.raises(
        ValueError, match=f"the student '{student_dir}' has another tokenizer than the teacher 'tiny-teacher'"
    ):
        label_dataset(config(tmp_path, data, student_model_name_or_path=str(student_dir)), model, tokenizer)
    assert not (tmp_path / "out").exists()

    # The same tokenizer saved as the student's: accepted, and the student's chat template renders its prompts.
    same_dir = tmp_path / "same-student"
    load_tokenizer(tokenizer_dir).save_pretrained(same_dir)
    label_dataset(
        config(tmp_path, data, student_model_name_or_path=str(same_dir)), model, tokenizer, show_progress=False
    )
    dataset, _ = load_soft_label_dataset(str(tmp_path / "out"))
    student = make_tiny_model(seed=0, vocab_size=len(other))
    with pytest.raises(SoftLabelError, match="made with another tokenizer"):
        SSBTrainer(student, args=args(tmp_path), train_dataset=dataset, processing_class=other)

    # `ssb-trl train` takes the labelled folder unchanged: a student of the teacher's tokenizer trains, one of
    # another tokenizer is refused before training.
    make_tiny_model(seed=0).save_pretrained(same_dir)
    student.save_pretrained(student_dir)

    def train(model_dir: Path, out: str) -> None:
        flags = {"dataset_name": tmp_path / "out", "model_name_or_path": model_dir, "output_dir": tmp_path / out,
                 "max_steps": 1, "per_device_train_batch_size": 2, "use_cpu": "true", "bf16": "false",
                 "report_to": "none", "save_strategy": "no", "gradient_checkpointing": "false"}  # fmt: skip
        argv = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
        train_script.main(*train_script.make_parser().parse_args_and_config(argv)[:3])

    train(same_dir, "trained")
    assert (tmp_path / "trained" / "model.safetensors").is_file()
    with pytest.raises(SoftLabelError, match="made with another tokenizer"):
        train(student_dir, "refused")


def test_label_is_a_launched_command_with_flags_and_yaml(tmp_path) -> None:
    assert "label" in COMMANDS and "label" in LAUNCHED_COMMANDS
    parser = make_parser(prog="ssb-trl label")
    assert (
        "--teacher_model_name_or_path" in parser.format_help()
        and "--student_model_name_or_path" in parser.format_help()
    )
    yaml_file = tmp_path / "label.yaml"
    yaml_file.write_text("dataset_name: data.jsonl\nteacher_model_name_or_path: teacher\nsoft_label_top_k: 16\n")
    (parsed,) = parser.parse_args_and_config(["--config", str(yaml_file), "--logprob_dtype", "uint8"])
    assert (parsed.dataset_name, parsed.soft_label_top_k, parsed.logprob_dtype) == ("data.jsonl", 16, "uint8")
    (shipped,) = parser.parse_args_and_config(["--config", str(REPO / "recipes/configs/label_qwen2.5.yaml")])
    assert (shipped.teacher_model_name_or_path, shipped.logprob_dtype) == ("Qwen/Qwen2.5-7B-Instruct", "uint8")
    with pytest.raises(ValueError, match="no teacher"):
        LabelConfig(dataset_name="data.jsonl")
    with pytest.raises(ValueError, match="both a 'teacher_prompt' column and --teacher_system_prompt"):
        label_dataset(LabelConfig(dataset_name=str(write_rows(tmp_path / "t.jsonl", [{**ROWS[0], "teacher_prompt": "x"}])),
                                  teacher_model_name_or_path="t", teacher_system_prompt="You are a tutor."),
                      make_tiny_model(hidden_size=16), load_tokenizer(BUNDLED_MODEL))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["config_file", "num_processes_only"])
def test_two_processes_split_the_shards_and_match_one(tmp_path, tokenizer_dir, launch) -> None:
    """With an accelerate config of two CPU processes, or `--num_processes 2` alone on a CPU (it ran one process
    without a word: accelerate's single-process launcher)."""
    teacher_dir = tmp_path / "teacher"
    make_tiny_model(seed=5, hidden_size=16).save_pretrained(teacher_dir)
    load_tokenizer(tokenizer_dir).save_pretrained(teacher_dir)
    data = write_rows(tmp_path / "in.jsonl", ROWS * 2)
    settings = {"dataset_name": str(data), "teacher_model_name_or_path": str(teacher_dir), "soft_label_top_k": K,
                "shard_size": 2, "dtype": "float32"}  # fmt: skip
    yaml_file = tmp_path / "label.yaml"
    yaml_file.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    accelerate_config = tmp_path / "cpu_ddp.yaml"
    accelerate_config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nuse_cpu: true\nnum_machines: 1\n"
        "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nmain_training_function: main\n"
    )
    command = [
        sys.executable, "-m", "ssb_trl", "label", "--config", str(yaml_file), "--output_dir", str(tmp_path / "two"),
        *(["--config_file", str(accelerate_config)] if launch == "config_file" else []), "--num_processes", "2",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Process 0/2: 2 of its 2 shards" in result.stderr and "Process 1/2: 2 of its 2 shards" in result.stderr
    label_dataset(LabelConfig(**settings, output_dir=str(tmp_path / "one")), show_progress=False)
    two = load_soft_label_dataset(str(tmp_path / "two"))[0].to_list()
    assert two == load_soft_label_dataset(str(tmp_path / "one"))[0].to_list() and len(two) == 8
