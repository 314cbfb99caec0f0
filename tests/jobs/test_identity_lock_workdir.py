"""What the run engine (`ssb_trl.jobs`: identity, lock, workdir) makes of a run, shown on `ssb-trl prepare` (issue
17): a model replaced at the same path or a Hub model whose revision moved, one question file typed several ways or
edited in place, two runs in one folder, a damaged work folder. Runs use the bigram "digit model" of
tests/helpers.py (real tokenizer, generation, grading and soft labels, in seconds).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ssb_trl.models import BUNDLED_MODEL, bundled_model_dir
from ssb_trl.prepare import NoPairsError, PrepConfig, prepare_ssb_data
from ssb_trl.prepare.job import PrepareJob
from ssb_trl.soft_labels.io import load_soft_label_dataset
from tests.helpers import GOLDS, make_digit_model, small_config, write_questions

REPO = Path(__file__).resolve().parents[2]


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _save_digit_model(folder: Path, tokenizer, seed: int = 0) -> str:
    make_digit_model(tokenizer, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(config: PrepConfig, **kwargs):
    return prepare_ssb_data(config, show_progress=False, **kwargs)


# ------------------------------------------------------------------------------------ 1. the model, by content


def test_a_model_replaced_at_the_same_path_is_refused(tmp_path: Path, tokenizer) -> None:
    model_dir = _save_digit_model(tmp_path / "model", tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    _run(small_config(tmp_path, questions, model_name_or_path=model_dir, num_questions=6))
    recorded = json.loads(PrepareJob.work_dir(tmp_path / "out").settings_path.read_text())["identities"]["model"]
    assert recorded["kind"] == "local files" and len(recorded["sha256"]) == 64
    _, metadata = load_soft_label_dataset(str(tmp_path / "out"))
    assert metadata.source["model_fingerprint"] == recorded  # the dataset says which weights made it
    # Retrained weights saved over the old ones; a larger --num_questions would have mixed the two models' shards.
    _save_digit_model(tmp_path / "model", tokenizer, seed=1)
    grown = small_config(tmp_path, questions, model_name_or_path=model_dir, num_questions=12)
    with pytest.raises(ValueError, match=r"different settings \(model \(weights and config, by content\): ") as error:
        _run(grown)
    assert f"local files {Path(model_dir).resolve()}" in str(error.value)
    assert "choose another --output_dir" in str(error.value)
    # The same weights typed another way (a symlink, a relative path) are the same model: the run resumes.
    _save_digit_model(tmp_path / "model", tokenizer, seed=0)
    (tmp_path / "link").symlink_to(tmp_path / "model")
    summary = _run(small_config(tmp_path, questions, model_name_or_path=str(tmp_path / "link"), num_questions=12))
    assert summary.shards_reused == [0, 1] and summary.questions == 12


def test_a_replaced_model_object_is_refused_too(tmp_path: Path, tokenizer) -> None:
    questions = write_questions(tmp_path / "q.jsonl", GOLDS)
    _run(small_config(tmp_path, questions, num_questions=6), model=make_digit_model(tokenizer), tokenizer=tokenizer)
    other = make_digit_model(tokenizer, seed=3)
    with pytest.raises(ValueError, match=r"model \(weights and config, by content\): 'model object"):
        _run(small_config(tmp_path, questions, num_questions=9), model=other, tokenizer=tokenizer)


def test_the_bundled_model_is_the_same_by_name_or_by_its_cache_path(tmp_path: Path) -> None:
    cache = str(bundled_model_dir())
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:2])
    settings = {"rollout_max_new_tokens": 4, "teacher_max_new_tokens": 4, "num_rollouts": 2, "shard_size": 2}
    with pytest.raises(NoPairsError):  # the 135M model on two questions: rollouts kept, no pair (fine here)
        _run(small_config(tmp_path, questions, model_name_or_path=BUNDLED_MODEL, device="cpu", **settings))
    rollouts = PrepareJob.work_dir(tmp_path / "out").shard_path("rollouts", 0)
    before = _stamp(rollouts)
    with pytest.raises(NoPairsError):  # not "different settings": the same model, typed as its cache folder
        _run(small_config(tmp_path, questions, model_name_or_path=cache, device="cpu", **settings))
    assert _stamp(rollouts) == before
    from ssb_trl.models import model_fingerprint

    assert model_fingerprint(BUNDLED_MODEL) == model_fingerprint(cache)


def test_a_hub_model_is_identified_by_its_revision(tmp_path: Path) -> None:
    """A Hub cache (offline) whose `main` moves to a new commit: the fingerprint follows the revision, not the name."""
    from transformers import LlamaConfig

    repo = tmp_path / "hub" / "models--org--tiny"
    for commit in ("a" * 40, "b" * 40):
        LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1).save_pretrained(
            repo / "snapshots" / commit
        )
    (repo / "refs").mkdir()
    script = (
        "import json; from ssb_trl.models import model_fingerprint; print(json.dumps(model_fingerprint('org/tiny')))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    identities = []
    for commit in ("a" * 40, "b" * 40):
        (repo / "refs" / "main").write_text(commit)
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        identities.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert [i["revision"] for i in identities] == ["a" * 40, "b" * 40]
    assert identities[0]["kind"] == "Hub revision" and identities[0]["sha256"] != identities[1]["sha256"]


# --------------------------------------------------------------------------- 2. the question source, by content


def test_one_question_file_typed_differently_resumes(
    tmp_path: Path, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_digit_model(tokenizer)
    (tmp_path / "data").mkdir()
    questions = write_questions(tmp_path / "data" / "q.jsonl", GOLDS[:9])
    (tmp_path / "q-link.jsonl").symlink_to(questions)
    _run(small_config(tmp_path, questions), model=model, tokenizer=tokenizer)
    rows = {shard: _stamp(PrepareJob.work_dir(tmp_path / "out").shard_path("rows", shard)) for shard in range(3)}
    monkeypatch.chdir(tmp_path)
    for typed in ("data/q.jsonl", "./data/q.jsonl", "data/../data/q.jsonl", "q-link.jsonl"):
        summary = _run(small_config(tmp_path, Path(typed)), model=model, tokenizer=tokenizer)
        assert summary.shards_reused == [0, 1, 2], typed
    assert {
        shard: _stamp(PrepareJob.work_dir(tmp_path / "out").shard_path("rows", shard)) for shard in range(3)
    } == rows


def test_a_question_file_edited_in_place_redoes_the_shards_it_changed(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_digit_model(tokenizer)
    questions = write_questions(tmp_path / "q.jsonl", GOLDS[:9])
    config = small_config(tmp_path, questions)
    _run(config, model=model, tokenizer=tokenizer)
    work = PrepareJob.work_dir(config.output_dir)
    kept = {shard: _stamp(work.shard_path("rollouts", shard)) for shard in (0, 2)}
    lines = questions.read_text().splitlines()
    lines[4] = json.dumps({"question": "Question 4, corrected: which digit am I thinking of?", "answer": "2"})
    questions.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        summary = _run(config, model=model, tokenizer=tokenizer)
    assert (
        "the questions of shard(s) [1] differ from the recorded run's (the input was edited): redoing those shards; "
        "keeping the 2 other finished shards" in _messages(caplog)
    )
    assert summary.shards_generated == [1] and summary.shards_reused == [0, 2]
    assert {shard: _stamp(work.shard_path("rollouts", shard)) for shard in (0, 2)} == kept
    fresh = small_config(tmp_path, questions, output_dir=str(tmp_path / "fresh"))
    _run(fresh, model=model, tokenizer=tokenizer)
    assert (
        load_soft_label_dataset(config.output_dir)[0].to_list()
        == load_soft_label_dataset(fresh.output_dir)[0].to_list()
    )


def test_another_question_file_is_still_refused(tmp_path: Path, tokenizer) -> None:
    model = make_digit_model(tokenizer)
    _run(small_config(tmp_path, write_questions(tmp_path / "a.jsonl", GOLDS[:6])), model=model, tokenizer=tokenizer)
    other = write_questions(tmp_path / "b.jsonl", GOLDS[6:12])
    with pytest.raises(ValueError, match=r"different settings \(source: '.*a\.jsonl' -> '.*b\.jsonl'\)"):
        _run(small_config(tmp_path, other), model=model, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------- 3. one run per folder


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS[:6]))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from ssb_trl.prepare.job import PrepareJob; PrepareJob.work_dir(sys.argv[1]).lock.acquire(); "
            "print('locked', flush=True); time.sleep(120)",
            config.output_dir,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RuntimeError, match=f"is in use by another `ssb-trl prepare` run: pid {holder.pid} on host"
        ) as error:
            _run(config, model=model, tokenizer=tokenizer)
        assert f"command: {Path(sys.executable).name} -c {config.output_dir}" in str(error.value)
        assert "wait for it to finish, or use another --output_dir" in str(error.value)
        assert not PrepareJob.work_dir(config.output_dir).settings_path.exists()  # refused before anything was done
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: it leaves its lock behind, as a crash would
        holder.wait(timeout=30)
    with caplog.at_level(logging.WARNING):
        summary = _run(config, model=model, tokenizer=tokenizer)
    assert f"taking over the lock of a run that is gone (pid {holder.pid} on host" in _messages(caplog)
    assert summary.questions == 6 and not PrepareJob.work_dir(config.output_dir).lock.path.exists()


# ----------------------------------------------------------------------------------- 4. a damaged work folder


@pytest.fixture()
def finished_run(tmp_path: Path, tokenizer):
    model = make_digit_model(tokenizer)
    config = small_config(tmp_path, write_questions(tmp_path / "q.jsonl", GOLDS[:9]))
    _run(config, model=model, tokenizer=tokenizer)
    return (
        config,
        model,
        PrepareJob.work_dir(config.output_dir),
        load_soft_label_dataset(config.output_dir)[0].to_list(),
    )


def test_a_cut_off_shard_file_is_named_and_deleting_it_redoes_that_shard(finished_run, tokenizer) -> None:
    config, model, work, dataset = finished_run
    path = work.shard_path("rollouts", 1)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # cut off mid-line, as a full disk or a copy gone wrong would
    with pytest.raises(ValueError, match=r"shard-00001\.jsonl is damaged: line 3 is not valid JSON") as error:
        _run(config, model=model, tokenizer=tokenizer)
    assert "Delete them and rerun with the same settings: only those shards are redone" in str(error.value)
    path.unlink()
    summary = _run(config, model=model, tokenizer=tokenizer)
    assert summary.shards_generated == [1] and summary.shards_reused == [0, 2]
    assert load_soft_label_dataset(config.output_dir)[0].to_list() == dataset


def test_an_empty_or_short_shard_file_is_not_finished_work(finished_run, tokenizer) -> None:
    config, model, work, _ = finished_run
    empty, short = work.shard_path("teacher", 0), work.shard_path("rollouts", 2)
    empty.write_text("")
    short.write_text(short.read_text().splitlines(keepends=True)[0])  # cut at a line end: still parses
    with pytest.raises(ValueError) as error:
        _run(config, model=model, tokenizer=tokenizer)
    message = str(error.value)
    assert f"{empty} is empty (0 bytes), but its shard has 3 questions" in message
    assert f"{short} holds 1 records, but its shard has 3 questions" in message
    assert "2 finished shard file(s)" in message and "only those shards are redone" in message


def test_a_deleted_settings_file_says_what_the_folder_holds_and_the_fix(finished_run, tokenizer) -> None:
    config, model, work, _ = finished_run
    work.settings_path.unlink()
    with pytest.raises(
        ValueError,
        match=r"settings\.json is missing, but .*ssb_work holds 12 finished shard files",  # 3 shards x 4 stages
    ) as error:
        _run(config, model=model, tokenizer=tokenizer)
    assert f"Delete {work.root} to start afresh in this folder, or choose another --output_dir" in str(error.value)
