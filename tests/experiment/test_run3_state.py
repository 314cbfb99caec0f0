"""Experiment 3 outlives one machine: `run3.sh save` keeps the generations, training logs and results (never weights
or soft labels), and `run3.sh restore` lays them out again as the data stage expects, without overwriting."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

RUN3 = Path(__file__).resolve().parents[2] / "recipes" / "experiment" / "run3.sh"


def _run3(stage: str, out: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXPERIMENT3_DIR": str(out), "EXPERIMENT3_STATE": str(state)}
    return subprocess.run(["bash", str(RUN3), stage, *args], env=env, capture_output=True, text=True)


def _write(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_save_keeps_the_small_state_and_restore_lays_it_out_for_the_next_stage(tmp_path: Path) -> None:
    out, state, fresh = tmp_path / "out", tmp_path / "state", tmp_path / "fresh"
    work = out / "data" / "teacher_answers" / "ssb_work"
    _write(work / "settings.json", '{"config": {}}')
    for part in ("rollouts", "teacher", "hint_check"):
        _write(work / part / "shard-00000.jsonl", f'{{"part": "{part}"}}\n')
    _write(work / "rows" / "shard-00000" / "data-00000-of-00001.arrow", "soft labels")
    _write(out / "data" / "correct_rollouts" / "ssb_metadata.json")
    _write(out / "logs" / "data_teacher_answers.log", "Shard 0: generated rollouts (41.2 s)")
    run = out / "train" / "on_policy-lr1e-4-seed0"
    _write(run / "trainer_state.json", '{"log_history": []}')
    _write(run / "adapter_model.safetensors", "weights")
    _write(out / "validation" / "on_policy-lr1e-4-seed0" / "results.json", '{"models": []}')

    saved = _run3("save", out, state)
    assert saved.returncode == 0, saved.stderr
    kept = sorted(str(path.relative_to(state)) for path in state.rglob("*") if path.is_file())
    assert kept == [
        "generations.tar.xz",
        "train/on_policy-lr1e-4-seed0/trainer_state.json",
        "validation/on_policy-lr1e-4-seed0/results.json",
    ]
    with tarfile.open(state / "generations.tar.xz") as packed:
        names = packed.getnames()
    assert "data/teacher_answers/ssb_work/rollouts/shard-00000.jsonl" in names
    assert "logs/data_teacher_answers.log" in names
    assert not any("rows" in name for name in names)  # soft labels are forward passes, redone on restore

    _write(fresh / "validation" / "on_policy-lr1e-4-seed0" / "results.json", '{"models": ["newer"]}')
    restored = _run3("restore", fresh, state)
    assert restored.returncode == 0, restored.stderr
    for mode in ("teacher_answers", "rollouts", "correct_rollouts"):
        assert (fresh / "data" / mode / "ssb_work" / "teacher" / "shard-00000.jsonl").exists()
        assert (fresh / "data" / mode / "ssb_work" / "settings.json").read_text() == '{"config": {}}'
    assert (fresh / "train" / "on_policy-lr1e-4-seed0" / "trainer_state.json").exists()
    assert (fresh / "validation" / "on_policy-lr1e-4-seed0" / "results.json").read_text() == '{"models": ["newer"]}'
    assert not (fresh / "generations.tar.xz").exists()


def test_save_before_any_data_says_what_to_run(tmp_path: Path) -> None:
    saved = _run3("save", tmp_path / "out", tmp_path / "state")
    assert saved.returncode == 2
    assert "run `run3.sh data` first" in saved.stderr


def test_two_cores_can_share_a_stage_one_learning_rate_or_arm_each(tmp_path: Path) -> None:
    """`lr ARM:LR` takes one learning rate of an arm's grid (the rest of the grid is left to the other core), and
    `test ARM...` leaves the base model to the job that names `base`: two jobs never write one folder."""
    out = tmp_path / "out"
    for run in ("rft-lr1e-3-seed0", "rft-lr3e-4-seed0"):
        _write(out / "validation" / run / "results.json")
    one = _run3("lr", out, tmp_path / "state", "rft:1e-3")
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == ["rft lr 1e-3: done"]
    whole = _run3("lr", out, tmp_path / "state", "rft")
    assert whole.stdout.splitlines() == ["rft lr 3e-4: done", "rft lr 1e-3: done"]

    _write(out / "picks.json", '{"rft": 0.001}')
    for suite in ("test", "neighbour"):
        _write(out / suite / "base" / "results.json")
        for seed in (0, 1, 2):
            _write(out / suite / f"rft-seed{seed}" / "results.json")
    arms_only = _run3("test", out, tmp_path / "state", "rft")
    assert arms_only.returncode == 0, arms_only.stderr
    assert "base" not in arms_only.stdout
    # Seed 0 is the learning-rate run at the pick, its folder spelt as the grid spells it (not 0.001).
    assert arms_only.stdout.splitlines() == [
        f"rft seed 0: tested ({out}/train/rft-lr1e-3-seed0)",
        f"rft seed 1: tested ({out}/train/rft-seed1)",
        f"rft seed 2: tested ({out}/train/rft-seed2)",
    ]
    with_base = _run3("test", out, tmp_path / "state", "base", "rft")
    assert with_base.stdout.splitlines()[:2] == [f"base in {out}/test: done", f"base in {out}/neighbour: done"]
