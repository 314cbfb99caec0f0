"""Bad input in data preparation (issues 10, 17 and 30): settings caught before any work (greedy rollouts, a GPU the
machine lacks), reruns that change later-stage settings or num_questions, runs that end without pairs or without a
kept teacher answer. Runs use the bigram "digit model" of tests/helpers.py (real tokenizer, generation, grading and
soft-label extraction, in seconds).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch

from ssb_trl.eval import EvalConfig
from ssb_trl.prepare import NoPairsError, PrepConfig, prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.soft_labels.io import load_soft_label_dataset
from ssb_trl.tasks.sources import QuestionSource, load_questions
from tests.helpers import GOLDS, make_digit_model, small_config, write_questions

RG = "reasoning_gym:basic_arithmetic"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------------------------ settings


def test_num_questions_defaults_to_every_question_of_the_source(tmp_path: Path) -> None:
    path = write_questions(tmp_path / "q.jsonl", list(range(40)))
    config = PrepConfig(dataset_name=str(path), model_name_or_path="m")
    assert config.num_questions is None and len(load_questions(config)) == 40


def test_reasoning_gym_questions_keep_their_order_when_num_questions_grows() -> None:
    from ssb_trl.jobs.identity import shard_digests

    small = load_questions(QuestionSource(dataset_name=RG, source_seed=7, num_questions=5))
    large = load_questions(QuestionSource(dataset_name=RG, source_seed=7, num_questions=9))
    assert [(q.id, q.question, q.answer) for q in small] == [(q.id, q.question, q.answer) for q in large[:5]]
    # The recorded per-shard digests agree for the shards both runs fill, so the first shards are kept.
    small_digests = shard_digests([PrepareJob.input_record(q) for q in small], 2)
    large_digests = shard_digests([PrepareJob.input_record(q) for q in large], 2)
    assert small_digests[:2] == large_digests[:2]
    assert small_digests[2] != large_digests[2]  # the partly filled shard is redone


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vllm_gpu_memory_utilization": math.nan}, r"finite numbers, got vllm_gpu_memory_utilization=nan"),
        ({"rollout_top_p": math.inf}, "finite numbers"),
        ({"generation_backend": "vlm"}, r"generation_backend must be one of \['auto', 'transformers', 'vllm', 'vllm_"),
        ({"generation_backend": "vllm_server"}, "needs --vllm_server_base_url"),
        ({"generation_backend": "transformers", "vllm_server_base_url": "http://h:1"}, "drop the URL"),
        ({"vllm_server_max_concurrency": 0}, "vllm_server_max_concurrency must be >= 1"),
        ({"max_question_chars": 0}, "max_question_chars must be >= 1"),
    ],
)
def test_bad_prep_settings_are_refused_by_the_config(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="m", **overrides)


def test_setting_errors_stop_before_anything_is_written(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:6])
    work = PrepareJob.work_dir(tmp_path / "out")
    with pytest.raises(ValueError, match=r"soft_label_top_k=60000 is larger than the vocabulary .* \(49152 tokens\)"):
        prepare_ssb_data(small_config(tmp_path, questions, soft_label_top_k=60000), model=model, tokenizer=tokenizer)
    assert not work.root.exists()
    with pytest.raises(ValueError, match=r"rollout_max_new_tokens=100000 is more than .* context window is 2048"):
        prepare_ssb_data(
            small_config(tmp_path, questions, rollout_max_new_tokens=100_000), model=model, tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match=r"cannot load the model '.*no-such-model'.*Nothing was written"):
        prepare_ssb_data(small_config(tmp_path, questions, model_name_or_path=str(tmp_path / "no-such-model")))
    assert not work.root.exists()
    # The corrected run in the same folder is a new run, not a refused one.
    summary = prepare_ssb_data(
        small_config(tmp_path, questions), model=model, tokenizer=tokenizer, show_progress=False
    )
    assert summary.questions == 6 and work.done_path.exists()
    # An output_dir that is a file is refused up front too.
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        prepare_ssb_data(small_config(tmp_path, questions, output_dir=str(a_file)), model=model, tokenizer=tokenizer)
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("overrides", [{"rollout_temperature": 0.0}, {"rollout_top_k": 1}])
def test_greedy_rollouts_are_refused_up_front(overrides: dict) -> None:
    with pytest.raises(ValueError, match=r"greedy decoding: the 4 rollouts of a question would be identical"):
        PrepConfig(dataset_name="q.jsonl", model_name_or_path="m", **overrides)


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


# ------------------------------------------------------------------------------------------------ reruns


def test_changing_later_stage_settings_reuses_the_earlier_stages(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:6])
    work = PrepareJob.work_dir(tmp_path / "out")
    first = prepare_ssb_data(small_config(tmp_path, questions), model=model, tokenizer=tokenizer, show_progress=False)
    rollouts = {shard: _stamp(work.shard_path("rollouts", shard)) for shard in (0, 1)}

    with caplog.at_level(logging.WARNING):
        more_retries = small_config(tmp_path, questions, teacher_retries=4)
        second = prepare_ssb_data(more_retries, model=model, tokenizer=tokenizer, show_progress=False)
    assert (
        "settings changed (teacher_retries: 2 -> 4): reusing the finished rollouts (2 shards); "
        "redoing teacher answers, hint check (unhinted answers), soft-label rows" in _messages(caplog)
    )
    assert {shard: _stamp(work.shard_path("rollouts", shard)) for shard in (0, 1)} == rollouts
    assert (second.rollouts_correct, second.pairs) == (first.rollouts_correct, first.pairs)
    assert second.teacher_attempts == 5 * second.pairs  # the teacher stage really ran again, with 1 + 4 attempts

    teacher = {shard: _stamp(work.shard_path("teacher", shard)) for shard in (0, 1)}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        smaller_k = small_config(tmp_path, questions, teacher_retries=4, soft_label_top_k=4)
        prepare_ssb_data(smaller_k, model=model, tokenizer=tokenizer, show_progress=False)
    assert (
        "settings changed (soft_label_top_k: 8 -> 4): reusing the finished rollouts (2 shards), teacher answers (2 "
        "shards), hint check (unhinted answers) (2 shards); redoing soft-label rows" in _messages(caplog)
    )
    assert {shard: _stamp(work.shard_path("teacher", shard)) for shard in (0, 1)} == teacher
    dataset, metadata = load_soft_label_dataset(str(work.output_dir))
    assert metadata.top_k == 4 and all(len(ids) == 4 for row in dataset["teacher_topk_ids"] for ids in row)
    # The same dataset as a fresh run with the final settings.
    fresh = small_config(
        tmp_path, questions, teacher_retries=4, soft_label_top_k=4, output_dir=str(tmp_path / "fresh")
    )
    prepare_ssb_data(fresh, model=model, tokenizer=tokenizer, show_progress=False)
    assert load_soft_label_dataset(fresh.output_dir)[0].to_list() == dataset.to_list()
    # A change of what the rollouts depend on would discard them: still refused, naming what may change instead.
    with pytest.raises(
        ValueError, match=r"different settings \(seed: 42 -> 1\).*teacher_retries.*and the number of questions"
    ):
        prepare_ssb_data(
            small_config(tmp_path, questions, seed=1, teacher_retries=4, soft_label_top_k=4),
            model=model,
            tokenizer=tokenizer,
        )


def test_growing_num_questions_adds_shards_and_keeps_the_finished_ones(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    work = PrepareJob.work_dir(tmp_path / "out")
    prepare_ssb_data(small_config(tmp_path, questions, num_questions=7), model=model, tokenizer=tokenizer)
    kept = {shard: _stamp(work.shard_path("rows", shard)) for shard in (0, 1)}
    with caplog.at_level(logging.WARNING):
        grown = prepare_ssb_data(small_config(tmp_path, questions, num_questions=12), model=model, tokenizer=tokenizer)
    assert (
        "the number of questions changed (7 -> 12): keeping 2 finished shards, redoing shard(s) [2] "
        "(their questions changed); 2 of 4 shards to do" in _messages(caplog)
    )
    assert {shard: _stamp(work.shard_path("rows", shard)) for shard in (0, 1)} == kept
    assert grown.questions == 12
    fresh = small_config(tmp_path, questions, num_questions=12, output_dir=str(tmp_path / "fresh"))
    prepare_ssb_data(fresh, model=model, tokenizer=tokenizer, show_progress=False)
    assert (
        load_soft_label_dataset(str(work.output_dir))[0].to_list()
        == load_soft_label_dataset(fresh.output_dir)[0].to_list()
    )


def test_no_pairs_prints_the_summary_and_its_hint_works(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", [7, 8, 9, *GOLDS])  # the digit model never answers 7, 8, 9
    with caplog.at_level(logging.WARNING), pytest.raises(NoPairsError) as error:
        prepare_ssb_data(small_config(tmp_path, questions, num_questions=3), model=model, tokenizer=tokenizer)
    message = str(error.value)
    assert "3 questions, rollout accuracy 0.0% (0/12)" in message and "0 pairs, teacher yield 0/0" in message
    assert "rerun into the same --output_dir with a larger --num_questions (now 3)" in message
    assert "pairs (questions with a right and a wrong rollout)" in _messages(caplog)  # the summary table, logged first
    # Following the hint is accepted, and works.
    summary = prepare_ssb_data(small_config(tmp_path, questions, num_questions=15), model=model, tokenizer=tokenizer)
    assert summary.questions == 15 and summary.teacher_kept > 0


def test_no_kept_teacher_answer_prints_the_summary_and_its_hint_works(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:6])
    # A digit and the end of turn take 2 tokens: with 1 no teacher answer ever finishes.
    cut = small_config(tmp_path, questions, teacher_max_new_tokens=1)
    with pytest.raises(
        NoPairsError,
        match=r"teacher never produced .*teacher yield 0/[1-9].*larger --teacher_max_new",
    ):
        prepare_ssb_data(cut, model=model, tokenizer=tokenizer)
    summary = prepare_ssb_data(small_config(tmp_path, questions), model=model, tokenizer=tokenizer)
    assert summary.teacher_kept > 0


def test_a_folder_recorded_before_the_run_engine_still_resumes(tmp_path: Path, tokenizer) -> None:
    """A work folder written before `prepare` ran on the job engine (its settings.json in the old layout: the model
    and source apart, questions' digests under "questions", the prompt version beside the config) resumes without
    redoing a shard, and its settings are rewritten in today's layout."""
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:6])
    config = small_config(tmp_path, questions)
    prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    work = PrepareJob.work_dir(config.output_dir)
    recorded = json.loads(work.settings_path.read_text())
    old_config = {k: v for k, v in recorded["config"].items() if k != "prompt_template_version"}
    legacy = {
        "config": old_config,
        "questions": recorded["inputs"],
        "prompt_template_version": recorded["config"]["prompt_template_version"],
        "model": recorded["identities"]["model"],
        "source": {k: v for k, v in recorded["identities"]["source"].items() if k != "name"},
    }
    work.settings_path.write_text(json.dumps(legacy))
    rows = {shard: _stamp(work.shard_path("rows", shard)) for shard in (0, 1)}
    dataset = load_soft_label_dataset(config.output_dir)[0].to_list()
    prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    assert {shard: _stamp(work.shard_path("rows", shard)) for shard in (0, 1)} == rows
    assert json.loads(work.settings_path.read_text()) == recorded  # upgraded to the current record
    assert load_soft_label_dataset(config.output_dir)[0].to_list() == dataset


def test_a_corrupt_settings_file_says_how_to_recover(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS[:3]))
    work = PrepareJob.work_dir(config.output_dir)
    work.settings_path.parent.mkdir(parents=True)
    work.settings_path.write_text('{"config": ')  # a disk filled up mid-write by another tool, say
    with pytest.raises(ValueError, match=r"settings\.json is unreadable .*; delete .*ssb_work to start"):
        prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)


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
