"""The rules `ssb-trl prepare` and `ssb-trl label` share through the run engine (`ssb_trl.jobs`), each shown on both.

1-2. a model (and its tokenizer) is identified by content, the same way: the same swap is refused by both;
3.   the settings fingerprint leaves out the runtime-only settings and the unused one of K and N, in both;
4.   a soft-label setting redoes only the rows, keeping the stages before, in both;
5.   a log-prob the stored dtype cannot hold is refused at the first shard, naming the row and the fix, in both;
6.   a row ends with the same end-of-turn token: label re-tokenizing prepare's rows writes the same input_ids;
7.   the work folder's messages name the job that was run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssb_trl.jobs.identity import tokenizer_digest
from ssb_trl.label import LabelConfig, label_dataset
from ssb_trl.label.job import LabelJob
from ssb_trl.prepare import prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.soft_labels.io import load_soft_label_dataset
from tests.helpers import make_digit_model, small_config, write_questions

GOLDS = [1, 2, 3, 7, 2, 1]


def prepared(tmp_path: Path, tokenizer, model=None, **overrides):
    model = model if model is not None else make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS), **overrides)
    return prepare_ssb_data(config, model=model, tokenizer=tokenizer, show_progress=False), config


def label_config(tmp_path: Path, data: Path, **overrides) -> LabelConfig:
    settings = {
        "dataset_name": str(data),
        "teacher_model_name_or_path": "digit-model",
        "soft_label_top_k": 8,
        "shard_size": 3,
        "teacher_max_new_tokens": 8,
        "output_dir": str(tmp_path / "labelled"),
    }
    return LabelConfig(**{**settings, **overrides})


def prompts_only(tmp_path: Path) -> Path:
    """The same questions as a prompt-only dataset: the teacher writes the completions (a generated stage)."""
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Question {i}: which digit am I thinking of?"}]} for i in range(6)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rules_1_2_the_same_model_swap_is_refused_by_both_jobs(tmp_path: Path, tokenizer) -> None:
    _, config = prepared(tmp_path, tokenizer)
    settings = json.loads(PrepareJob.work_dir(config.output_dir).settings_path.read_text())
    assert settings["identities"]["model"]["tokenizer_sha256"] == tokenizer_digest(tokenizer)
    other = make_digit_model(tokenizer, seed=1)
    with pytest.raises(ValueError, match=r"different settings \(model \(weights and config, by content\)"):
        prepare_ssb_data(config, model=other, tokenizer=tokenizer, show_progress=False)

    data = prompts_only(tmp_path)
    label_dataset(label_config(tmp_path, data), make_digit_model(tokenizer), tokenizer, show_progress=False)
    labelled = json.loads(LabelJob.work_dir(tmp_path / "labelled").settings_path.read_text())
    assert labelled["identities"]["teacher"]["tokenizer_sha256"] == tokenizer_digest(tokenizer)
    with pytest.raises(ValueError, match=r"different settings \(teacher \(weights and config, by content\)"):
        label_dataset(label_config(tmp_path, data), other, tokenizer, show_progress=False)


def test_rule_3_one_fingerprint_for_both_configs(tmp_path: Path) -> None:
    prepare = small_config(tmp_path, tmp_path / "q.jsonl")
    label = label_config(tmp_path, tmp_path / "rows.jsonl")
    for config in (prepare, label):
        fingerprint = config.fingerprint()
        assert "soft_label_draws" not in fingerprint and "soft_label_top_k" in fingerprint  # top-K mode reads K
        for runtime_only in ("generation_batch_size", "soft_label_batch_size", "output_dir", "generation_backend"):
            assert runtime_only not in fingerprint


def test_rule_4_a_soft_label_setting_redoes_only_the_rows_in_both_jobs(tmp_path: Path, tokenizer, caplog) -> None:
    model = make_digit_model(tokenizer)
    _, config = prepared(tmp_path, tokenizer, model=model)
    work = PrepareJob.work_dir(config.output_dir)
    rollouts = work.shard_path("rollouts", 0).stat().st_mtime_ns
    prepared(tmp_path, tokenizer, model=model, soft_label_temperature=1.0)
    assert work.shard_path("rollouts", 0).stat().st_mtime_ns == rollouts
    assert load_soft_label_dataset(config.output_dir)[1].temperature == 1.0

    data = prompts_only(tmp_path)
    label_dataset(label_config(tmp_path, data), model, tokenizer, show_progress=False)
    completions = LabelJob.work_dir(tmp_path / "labelled").shard_path("completions", 0)
    written = completions.stat().st_mtime_ns
    label_dataset(label_config(tmp_path, data, soft_label_temperature=1.0), model, tokenizer, show_progress=False)
    assert completions.stat().st_mtime_ns == written
    assert load_soft_label_dataset(str(tmp_path / "labelled"))[1].temperature == 1.0


def test_rule_5_an_unstorable_log_prob_is_refused_by_both_naming_the_row(tmp_path: Path, tokenizer) -> None:
    """At T = 1e-5 the digit model's log-probs fall far below float16's range (-65504)."""
    fix = r"--logprob_dtype float32 .*--soft_label_temperature"
    with pytest.raises(ValueError, match=rf"row '.*': a teacher log-prob of .* does not fit float16.*{fix}"):
        prepared(tmp_path, tokenizer, soft_label_temperature=1e-5)
    assert PrepareJob.work_dir(tmp_path / "out").shard_path("teacher", 0).is_file()  # the generated work is kept
    prepared(tmp_path, tokenizer, soft_label_temperature=1e-5, logprob_dtype="float32")  # the fix works

    rows = tmp_path / "rows.jsonl"
    row = {
        "prompt": [{"role": "user", "content": "Question 0?"}],
        "completion": [{"role": "assistant", "content": "7"}],
    }
    rows.write_text(json.dumps({**row, "id": "r0"}) + "\n")
    with pytest.raises(ValueError, match=rf"row 'r0': a teacher log-prob of .* does not fit float16.*{fix}"):
        label_dataset(
            label_config(tmp_path, rows, soft_label_temperature=1e-5),
            make_digit_model(tokenizer),
            tokenizer,
            show_progress=False,
        )


def test_rule_6_both_jobs_end_a_row_with_the_same_end_of_turn(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    _, config = prepared(tmp_path, tokenizer, model=model)
    ssb, _ = load_soft_label_dataset(config.output_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(row["input_ids"][-1] == end_of_turn for row in ssb)
    rows = tmp_path / "ssb_rows.jsonl"
    rows.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "completion")}) + "\n" for r in ssb))
    label_dataset(label_config(tmp_path, rows), model, tokenizer, show_progress=False)
    labelled, _ = load_soft_label_dataset(str(tmp_path / "labelled"))
    assert labelled["input_ids"] == ssb["input_ids"] and labelled["completion_mask"] == ssb["completion_mask"]
    # Teacher-forced on the same text, the soft labels differ only by what the teacher saw (the hint).
    assert [len(r) for r in labelled["teacher_topk_ids"]] == [len(r) for r in ssb["teacher_topk_ids"]]


def test_rule_7_the_work_folder_names_the_job_that_was_run(tmp_path: Path, tokenizer) -> None:
    data = prompts_only(tmp_path)
    work = LabelJob.work_dir(tmp_path / "labelled")
    work.lock.acquire()  # as another run of this process would hold it: refused in its own words
    holder = json.loads(work.lock.path.read_text())
    holder["pid"] += 1_000_000  # not this process, and alive-looking on another host
    holder["host"] = "elsewhere"
    work.lock.path.write_text(json.dumps(holder))
    with pytest.raises(RuntimeError, match=r"in use by another `ssb-trl label` run: pid .* on host elsewhere"):
        label_dataset(label_config(tmp_path, data), make_digit_model(tokenizer), tokenizer, show_progress=False)
    work.lock.path.unlink()
    label_dataset(label_config(tmp_path, data), make_digit_model(tokenizer), tokenizer, show_progress=False)
    completions = work.shard_path("completions", 0)
    completions.write_text(completions.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"completions/shard-00000.jsonl holds 1 records, but its shard has 3 rows"):
        label_dataset(label_config(tmp_path, data), make_digit_model(tokenizer), tokenizer, show_progress=False)
    with pytest.raises(ValueError, match=r"holds a `ssb-trl label` run, not a `ssb-trl prepare` run"):
        prepare_ssb_data(
            small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS), output_dir=str(work.output_dir)),
            model=make_digit_model(tokenizer),
            tokenizer=tokenizer,
            show_progress=False,
        )
