"""What preparation trains on (`--train_on`): the hinted teacher's answers (SSB), the student's rollouts under the
hinted teacher's soft labels (on-policy SSB), or the student's verified rollouts (RFT). Switching reuses the rollouts
and the teacher answers, and redoes only the rows; the train-time checks hold for student-written rows."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from ssb_trl import SSBConfig, SSBTrainer
from ssb_trl.models import BUNDLED_MODEL, load_model_and_tokenizer
from ssb_trl.prepare import PrepConfig, prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.soft_labels.checks import validate_soft_label_dataset
from ssb_trl.soft_labels.io import load_soft_label_dataset
from ssb_trl.soft_labels.schema import SoftLabelError
from tests.helpers import make_digit_model, small_config, write_questions

GOLDS = [1, 2, 3, 7, 2, 1, 3, 3, 2]


def _stamps(folder: Path, stage: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((folder / "ssb_work" / stage).glob("shard-*"))}


def test_switching_mode_reuses_the_rollouts_and_redoes_only_the_rows(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    out = tmp_path / "out"
    ssb = prepare_ssb_data(small_config(tmp_path, questions), model=model, tokenizer=tokenizer, show_progress=False)
    assert ssb.train_on == "teacher_answers" and ssb.rows_by_kind == {"teacher answer": ssb.teacher_kept}
    assert ssb.rows == ssb.teacher_kept  # what `ssb-trl prepare` reports as written
    rollouts, teacher = _stamps(out, "rollouts"), _stamps(out, "teacher")
    records = [json.loads(line) for p in sorted((out / "ssb_work" / "rollouts").glob("*.jsonl")) for line in p.open()]
    pairs = [r for r in records if any(x["correct"] for x in r["rollouts"]) and any(
        not x["correct"] and x["answer"] is not None for x in r["rollouts"])]  # fmt: skip

    on_policy = prepare_ssb_data(
        small_config(tmp_path, questions, train_on="rollouts"), model=model, tokenizer=tokenizer, show_progress=False
    )
    assert _stamps(out, "rollouts") == rollouts and _stamps(out, "teacher") == teacher  # reused, not redone
    dataset, metadata = load_soft_label_dataset(str(out))
    assert len(dataset) == 4 * len(pairs) == on_policy.rows  # every rollout of each pair
    assert on_policy.rows_by_kind["right"] > 0 and on_policy.rows_by_kind["wrong"] > 0
    assert metadata.source["train_on"] == "rollouts" and metadata.source["completions_written_by"] == "the student"
    assert "teacher_sampling" not in metadata.source  # no sampling bounds the student's tokens in the teacher's top-K
    by_id = {r["id"]: r for r in records}
    for row in dataset:
        question, index = row["id"].rsplit("/rollout-", 1)
        assert row["completion"][0]["content"] == by_id[question]["rollouts"][int(index)]["text"]
    validate_soft_label_dataset(dataset, metadata=metadata, vocab_size=len(tokenizer))
    assert "hint gain" in on_policy.table() and "train_on rollouts" in on_policy.table()
    # Only rows were redone: the summary says no engine ran this time (it named the configured one).
    assert on_policy.generation_backend == "" and on_policy.generation_settings == {}
    assert "none (the rows were redone from the saved generations)" in on_policy.table()

    rft = prepare_ssb_data(
        small_config(tmp_path, questions, train_on="correct_rollouts"),
        model=model,
        tokenizer=tokenizer,
        show_progress=False,
    )
    assert _stamps(out, "rollouts") == rollouts
    dataset, metadata = load_soft_label_dataset(str(out))
    right = {(r["id"], x["text"]) for r in records for x in r["rollouts"] if x["correct"] and x["finished"]}
    assert len(dataset) == len(right) == rft.rows_by_kind["right"] == rft.rows and rft.rows_by_kind["wrong"] == 0
    assert metadata.source["soft_labels_from"] == "the student, without a hint"
    assert metadata.source["teacher_sampling"] == metadata.source["rollout_sampling"]  # the student wrote them


def test_a_copied_folder_switches_mode_and_leaves_the_original_alone(tmp_path: Path, tokenizer) -> None:
    """The demo's RFT step (recipes/demo.sh): copy a finished SSB data folder, prepare the copy with
    --train_on correct_rollouts. Only the copy's rows are redone (no engine runs); the SSB dataset is untouched."""
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    ssb = prepare_ssb_data(small_config(tmp_path, questions), model=model, tokenizer=tokenizer, show_progress=False)
    original, copy = tmp_path / "out", tmp_path / "rft_data"
    shutil.copytree(original, copy)
    before = load_soft_label_dataset(str(original))[0].to_list()
    generated = {stage: _stamps(copy, stage) for stage in ("rollouts", "teacher", "hint_check")}
    config = small_config(tmp_path, questions, train_on="correct_rollouts", output_dir=str(copy))
    rft = prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False)
    assert rft.generation_backend == ""  # no engine ran: the copied generations were reused, as they are
    assert {stage: _stamps(copy, stage) for stage in generated} == generated and generated["rollouts"]
    dataset, metadata = load_soft_label_dataset(str(copy))
    assert metadata.source["train_on"] == "correct_rollouts" and len(dataset) == rft.rows_by_kind["right"] > 0
    kept, kept_metadata = load_soft_label_dataset(str(original))
    assert kept.to_list() == before and len(before) == ssb.rows  # the SSB dataset is as it was
    assert kept_metadata.source["train_on"] == "teacher_answers"


def test_a_fresh_on_policy_run_generates_no_teacher_answer(tmp_path: Path, tokenizer) -> None:
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = small_config(tmp_path, questions, train_on="rollouts", hint_check_samples=2)
    summary = prepare_ssb_data(config, model=make_digit_model(tokenizer), tokenizer=tokenizer, show_progress=False)
    work = PrepareJob.work_dir(config.output_dir)
    assert work.finished_shards("teacher") == [] and work.finished_shards("hint_check") == []
    assert summary.teacher_attempts == 0 and summary.hint_gain is None
    assert "not measured (train_on rollouts: the teacher writes no answer to compare)" in summary.table()
    with pytest.raises(ValueError, match="train_on must be one of"):
        small_config(tmp_path, questions, train_on="everything")


def test_the_top_k_check_is_adapted_to_student_written_rows(tmp_path: Path, tokenizer) -> None:
    """The check "each written token is among the teacher's top-K" holds for text the teacher sampled; the hinted
    teacher never sampled the student's rollouts, so on-policy rows do not claim a teacher sampling to check."""
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    config = small_config(tmp_path, questions, train_on="rollouts", soft_label_top_k=2)
    prepare_ssb_data(config, model=make_digit_model(tokenizer), tokenizer=tokenizer, show_progress=False)
    dataset, metadata = load_soft_label_dataset(config.output_dir)
    validate_soft_label_dataset(dataset, metadata=metadata)
    claimed = dataclasses.replace(metadata, source={**metadata.source, "teacher_sampling": {"top_k": 1}})
    with pytest.raises(SoftLabelError, match="are not among the teacher's top-2"):
        validate_soft_label_dataset(dataset, metadata=claimed)  # as if the hinted teacher had written them


def _train_steps(dataset, tokenizer, model, tmp_path: Path, **loss) -> float:
    args = SSBConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-4, report_to="none",
        use_cpu=True, save_strategy="no", bf16=False, temperature=2.0, seed=0, **loss,
    )  # fmt: skip
    trainer = SSBTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return trainer.train().training_loss


def test_each_mode_prepares_and_trains_on_the_bundled_model(tmp_path: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(BUNDLED_MODEL, dtype="float32", device="cpu")
    settings = dict(
        model_name_or_path=BUNDLED_MODEL, dataset_name="reasoning_gym:basic_arithmetic", source_seed=42,
        task_config='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}', num_questions=4,
        num_rollouts=4, rollout_max_new_tokens=48, teacher_max_new_tokens=64, teacher_retries=1,
        teacher_hint="answer_only", teacher_unpaired_questions=True, hint_check_samples=0, answer_fallbacks=True,
        soft_label_top_k=16, shard_size=4, dtype="float32", output_dir=str(tmp_path / "data"),
    )  # fmt: skip
    losses = {}
    for mode, loss in (
        ("teacher_answers", {"kd_weight": 1.0, "ce_weight": 0.0}),
        ("rollouts", {"kd_weight": 1.0, "ce_weight": 0.0}),
        ("correct_rollouts", {"kd_weight": 0.0, "ce_weight": 1.0}),
    ):
        summary = prepare_ssb_data(PrepConfig(**settings, train_on=mode), model=model, tokenizer=tokenizer)
        dataset, _ = load_soft_label_dataset(str(tmp_path / "data"))
        assert len(dataset) == sum(summary.rows_by_kind.values()) > 0, (mode, summary.rows_by_kind)
        student, _ = load_model_and_tokenizer(BUNDLED_MODEL, dtype="float32", device="cpu")
        losses[mode] = _train_steps(dataset, tokenizer, student, tmp_path / mode, **loss)
    assert all(math.isfinite(value) for value in losses.values()), losses
