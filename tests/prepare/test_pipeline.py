"""The SSB data pipeline end to end: pairing, soft-label rows, resumption after a real kill, 2 processes.

A random model almost never answers arithmetic right, so these tests use the digit model of tests/helpers.py: a
tiny Llama whose weights are set by hand to act as a bigram model: after the assistant header's newline it writes
one of the digits 1, 2 or 3 (uniformly), then ends its turn. On questions whose gold answer is 1, 2 or 3, a third of
its rollouts and teacher answers are right, so pairs and kept teacher answers happen for real, through the real
tokenizer, transformers generation, grading and soft-label extraction. Its soft labels are known exactly: a uniform
third on each digit, then all mass on the end-of-turn token.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssb_trl.generation.sampling import Sampling
from ssb_trl.prepare import NoPairsError, PrepConfig, prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.prepare.stages import choose_pair
from ssb_trl.soft_labels.checks import validate_soft_label_dataset
from ssb_trl.soft_labels.io import load_soft_label_dataset
from ssb_trl.tasks.prompts import chat_prompt_ids, student_messages
from tests.helpers import DIGITS, EOS, GOLDS, make_digit_model, small_config, write_questions

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


REPO = Path(__file__).resolve().parents[2]


def test_choose_pair() -> None:
    def rollouts(*answers):
        return [{"answer": a, "correct": a == "5"} for a in answers]

    rng = random.Random(0)
    # The most common wrong answer wins when it occurs more than once ("1,000" and "1000" are the same).
    for _ in range(20):
        pair = choose_pair(rollouts("5", "7", "1,000", "1000", None, None), rng)
        assert pair is not None and pair[0] == 0 and pair[1] == 2
    # All wrong answers distinct: a random one, but never a rollout without an answer.
    chosen = {choose_pair(rollouts("5", "7", "8", None, "9"), rng)[1] for _ in range(60)}
    assert chosen == {1, 2, 4}
    assert choose_pair(rollouts("5", "5", None, None), rng) is None  # no extractable wrong answer
    assert choose_pair(rollouts("4", "7"), rng) is None  # nothing correct


def test_pipeline_builds_the_soft_label_dataset(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = small_config(tmp_path, questions)
    summary = prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)

    dataset, metadata = load_soft_label_dataset(config.output_dir)
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=len(tokenizer))
    assert metadata.top_k == 8 and metadata.temperature == 2.0 and metadata.source["dataset_name"] == str(questions)
    assert summary.questions == len(GOLDS) and summary.rollouts == 4 * len(GOLDS)
    assert summary.rollouts_without_answer == 0 and summary.rollouts_truncated == 0
    assert 0.15 < summary.rollout_accuracy < 0.45  # about a third of the answerable questions
    assert 0 < summary.teacher_kept == len(dataset) <= summary.pairs <= len(GOLDS) - 2
    assert summary.answer_tokens == 2 * len(dataset)
    assert summary.bytes_per_answer_token > 8 * (4 + 2)
    assert summary.full_vocab_float32_bytes_per_token == 4 * len(tokenizer)

    digit_ids = {tokenizer.convert_tokens_to_ids(d) for d in DIGITS}
    eos = tokenizer.convert_tokens_to_ids(EOS)
    gold = {f"train/{i}": str(g) for i, g in enumerate(GOLDS)}
    for row in dataset:
        assert row["answer"] == gold[row["id"]] and row["answer"] in DIGITS
        prompt_ids = chat_prompt_ids(tokenizer, student_messages(row["prompt"][-1]["content"]))
        assert row["prompt"] == student_messages(row["prompt"][-1]["content"])
        answer_ids = [tokenizer.convert_tokens_to_ids(row["answer"]), eos]  # the verified answer, then end of turn
        assert row["input_ids"] == prompt_ids + answer_ids
        assert row["completion_mask"] == [0] * len(prompt_ids) + [1, 1]
        assert row["completion"] == [{"role": "assistant", "content": row["answer"]}]
        first, second = row["teacher_topk_ids"], row["teacher_topk_logprobs"]
        assert set(first[0][:3]) == digit_ids and all(abs(lp + math.log(3)) < 1e-2 for lp in second[0][:3])
        assert first[1][0] == eos and abs(second[1][0]) < 1e-2

    # One round of attempts at a time (least compute) also works, and never samples more attempts.
    sequential = small_config(
        tmp_path, questions, teacher_attempts_in_parallel=False, output_dir=str(tmp_path / "seq")
    )
    sequential_summary = prepare_ssb_data(sequential, model=model, tokenizer=tokenizer, show_progress=False)
    assert 0 < sequential_summary.teacher_kept and sequential_summary.teacher_attempts <= 3 * sequential_summary.pairs
    assert summary.teacher_attempts == 3 * summary.pairs  # all attempts at once

    # Rerunning with the same settings resumes (nothing left to do) and changes nothing.
    again = prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    assert summary.generation_backend == "transformers" and summary.shards_reused == []
    assert again.generation_backend == "" and again.shards_generated == []  # nothing generated: every shard reused
    assert again.shards_reused == summary.shards_generated == list(range(len(summary.shards_generated)))
    assert summary.generation_settings["backend"] == "transformers" and again.generation_settings == {}
    run_fields = {"generation_backend": "", "generation_settings": {}, "shards_generated": [], "shards_reused": []}
    assert dataclasses.replace(again, **run_fields) == dataclasses.replace(summary, **run_fields)
    assert load_soft_label_dataset(config.output_dir)[0].to_list() == dataset.to_list()
    # Other settings in the same directory are refused, naming what differs.
    with pytest.raises(ValueError, match=r"different settings \(num_rollouts: 4 -> 6\)"):
        prepare_ssb_data(small_config(tmp_path, questions, num_rollouts=6), model=model, tokenizer=tokenizer)
    # So is a directory that holds something else.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no `ssb-trl prepare` run"):
        prepare_ssb_data(small_config(tmp_path, questions, output_dir=str(tmp_path / "other")), model=model)


def test_no_pairs_is_a_clear_error_and_keeps_the_rollouts(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", [7, 8, 9]))
    with pytest.raises(NoPairsError, match=r"no question yielded a pair .* rollout accuracy 0\.0%.*--num_rollouts"):
        prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    assert PrepareJob.work_dir(config.output_dir).shard_path("rollouts", 0).is_file()


# --------------------------------------------------------------------------------------------------
# The recipe in subprocesses: a real kill midway, and two processes under accelerate launch.


@pytest.fixture(scope="module")
def recipe_inputs(tmp_path_factory, tokenizer_dir) -> dict[str, str]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("recipe")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Wider layers than needed make each shard take a moment, so the kill lands mid-run.
    make_digit_model(tokenizer, hidden_size=256, num_layers=4).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    questions = write_questions(root / "q.jsonl", GOLDS * 4)
    return {"model": str(root / "model"), "questions": str(questions), "root": str(root)}


def _recipe_args(inputs: dict[str, str], output_dir: str) -> list[str]:
    return [
        "--model_name_or_path", inputs["model"], "--dataset_name", inputs["questions"], "--num_questions", "48",
        "--rollout_max_new_tokens", "8", "--teacher_max_new_tokens", "8", "--soft_label_top_k", "8",
        "--shard_size", "2", "--output_dir", output_dir,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run_recipe(inputs: dict[str, str], output_dir: str) -> None:
    cmd = [sys.executable, str(REPO / "recipes" / "prepare_ssb_data.py"), *_recipe_args(inputs, output_dir)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(recipe_inputs) -> list[dict]:
    output_dir = str(Path(recipe_inputs["root"]) / "uninterrupted")
    _run_recipe(recipe_inputs, output_dir)
    return load_soft_label_dataset(output_dir)[0].to_list()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_dataset(recipe_inputs, uninterrupted, tmp_path: Path) -> None:
    output_dir = tmp_path / "killed"
    work = PrepareJob.work_dir(output_dir)
    cmd = [sys.executable, "-m", "ssb_trl.scripts.prepare", *_recipe_args(recipe_inputs, str(output_dir))]
    process = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not work.shard_path("rows", 0).is_dir():
            assert process.poll() is None, "the run ended before any shard was done"
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not work.done_path.exists(), "the run finished before it could be killed; make shards slower"
    done_before = sorted(p.name for p in (work.root / "rows").iterdir() if not p.name.startswith("."))
    assert 1 <= len(done_before) < 24
    _run_recipe(recipe_inputs, str(output_dir))
    assert work.done_path.exists()
    assert load_soft_label_dataset(str(output_dir))[0].to_list() == uninterrupted


@pytest.mark.slow
def test_two_processes_match_one(recipe_inputs, uninterrupted, tmp_path: Path) -> None:
    # On CPU, accelerate starts real parallel processes only via the multi-GPU (torchrun) path with
    # use_cpu; MULTI_CPU silently starts one process.
    accelerate_config = tmp_path / "cpu_ddp.yaml"
    accelerate_config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nuse_cpu: true\nnum_machines: 1\n"
        "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nmain_training_function: main\n"
    )
    output_dir = tmp_path / "two"
    # `ssb-trl prepare` (as `python -m ssb_trl`) hands the flags it does not know to `accelerate launch`.
    cmd = [
        sys.executable, "-m", "ssb_trl", "prepare", *_recipe_args(recipe_inputs, str(output_dir)),
        "--config_file", str(accelerate_config), "--num_processes", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Process 0/2" in result.stderr and "Process 1/2" in result.stderr, result.stderr[-3000:]
    rows = sorted(p.name for p in (PrepareJob.work_dir(output_dir).root / "rows").iterdir())
    assert len(rows) == 24  # 48 questions, shards of 2, dealt to both processes
    assert load_soft_label_dataset(str(output_dir))[0].to_list() == uninterrupted


def test_recipe_config_files_parse() -> None:
    from trl import TrlParser

    (config,) = TrlParser((PrepConfig,)).parse_args_and_config(
        ["--config", str(REPO / "recipes" / "configs" / "prepare_gsm8k.yaml"), "--num_questions", "8"]
    )
    assert config.dataset_name == "openai/gsm8k" and config.dataset_config == "main"
    assert config.task_config is None and config.answer_fallbacks is False and config.num_questions == 8
    assert config.rollout_sampling == Sampling(0.8, 50, 1.0, 1024, n=4)
    assert config.teacher_sampling == Sampling(0.4, 50, 1.0, 2048, n=2)
    # The demo's settings live in its YAML, not in the library's defaults.
    (demo,) = TrlParser((PrepConfig,)).parse_args_and_config(
        ["--config", str(REPO / "recipes/configs/demo_data.yaml")]
    )
    assert demo.task_config == {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    assert (demo.num_questions, demo.source_seed, demo.seed, demo.answer_fallbacks) == (64, 42, 42, True)
    assert demo.rollout_sampling == Sampling(0.8, 50, 1.0, 192, n=4)
    assert demo.teacher_sampling == Sampling(0.4, 50, 1.0, 256, n=4)
    assert demo.teacher_hint == "answer_only"  # experiment 2's chosen format (docs/experiment/RESULTS2.md)
    with pytest.raises(ValueError, match="no question source"):
        TrlParser((PrepConfig,)).parse_args_and_config([])
    args = ["--dataset_name", "rg:basic_arithmetic", "--num_questions", "4", "--model_name_or_path", "m"]
    (flags,) = TrlParser((PrepConfig,)).parse_args_and_config([*args, "--task_config", '{"min_digits": 2}'])
    assert flags.task_config == {"min_digits": 2} and flags.settings()["num_questions"] == 4
    with pytest.raises(ValueError, match="num_rollouts must be >= 2"):
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="m", num_rollouts=1)
    with pytest.raises(ValueError, match="no model"):
        PrepConfig(dataset_name="q.jsonl")
