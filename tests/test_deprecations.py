"""Renamed flags and values keep working for one release, each with one warning line (ssb_trl.deprecations).

Today the renamed values are the accelerate config names (ssb-trl's own -> TRL's); no flag is renamed yet, so the
flag path is shown with an entry added to the table for the test, through the real parser of `ssb-trl train`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssb_trl import cli, deprecations
from ssb_trl.deprecations import rename_args, rename_config
from ssb_trl.errors import ERROR_FILE_ENV
from ssb_trl.scripts import inspect_data, train
from ssb_trl.scripts.common import command_of, parse_settings

PROG = "ssb-trl train"
OLD_ACCELERATE_CONFIGS = {
    "ddp": "multi_gpu",
    "deepspeed_zero2": "zero2",
    "deepspeed_zero3": "zero3",
    "deepspeed_zero3_offload": "zero3_offload",
}


@pytest.fixture(autouse=True)
def user_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process the user started: not one launched by ssb-trl, rank 0."""
    monkeypatch.delenv(ERROR_FILE_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)


def _warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


@pytest.mark.parametrize("old, new", OLD_ACCELERATE_CONFIGS.items())
def test_old_accelerate_config_names_work_with_one_warning(capsys, old: str, new: str) -> None:
    args = ["--seed", "1", "--accelerate_config", old, "--num_processes", "2"]
    assert rename_args("train", args, PROG) == ["--seed", "1", "--accelerate_config", new, "--num_processes", "2"]
    assert _warnings(capsys) == [
        f"{PROG}: warning: --accelerate_config {old} is renamed --accelerate_config {new}; the old name stops "
        "working in 0.3"
    ]
    assert Path(cli.accelerate_config_path(new)).is_file()
    assert rename_args("prepare", [f"--accelerate_config={old}"], "ssb-trl prepare") == [f"--accelerate_config={new}"]
    assert rename_config("label", {"accelerate_config": old}, "ssb-trl label") == {"accelerate_config": new}
    assert len(_warnings(capsys)) == 2  # one per occurrence: the flag form and the YAML key
    assert rename_args("train", ["--accelerate_config", new], PROG) == ["--accelerate_config", new]
    assert _warnings(capsys) == []  # new names pass silently


def test_a_renamed_flag_works_on_the_command_line_and_in_the_yaml(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(deprecations.FLAG_RENAMES, "train", {"holdout_fraction": "eval_fraction"})
    args = ["--holdout_fraction", "0.25", "--use_cpu", "true"]
    _, (script, *_) = parse_settings(train.make_parser(prog=PROG), args, "train")
    assert script.eval_fraction == 0.25
    assert _warnings(capsys) == [
        f"{PROG}: warning: --holdout_fraction is renamed --eval_fraction; the old name stops working in 0.3"
    ]
    config = tmp_path / "run.yaml"
    config.write_text("holdout_fraction: 0.5\nuse_cpu: true\n")
    _, (script, *_) = parse_settings(train.make_parser(prog=PROG), ["--config", str(config)], "train")
    assert script.eval_fraction == 0.5
    assert _warnings(capsys) == [
        f"{PROG}: warning: the YAML key 'holdout_fraction' is renamed 'eval_fraction'; the old name stops working "
        "in 0.3"
    ]
    # Given under both names: one line naming the fix, exit 1 (the rule of ssb_trl.errors).
    with pytest.raises(SystemExit) as stopped:
        parse_settings(train.make_parser(prog=PROG), ["--holdout_fraction", "0.1", "--eval_fraction", "0.2"], "train")
    assert stopped.value.code == 1
    assert _warnings(capsys)[-1].startswith(
        f"{PROG}: error: --holdout_fraction and --eval_fraction are the same setting (--eval_fraction): pass it "
        "once, as --eval_fraction"
    )
    config.write_text("holdout_fraction: 0.1\neval_fraction: 0.2\n")
    with pytest.raises(SystemExit):
        parse_settings(train.make_parser(prog=PROG), ["--config", str(config)], "train")
    assert "the YAML sets both 'holdout_fraction' and 'eval_fraction', the same setting" in _warnings(capsys)[-1]


def test_launched_processes_and_other_ranks_rename_without_repeating_the_warning(monkeypatch, capsys) -> None:
    for variable, value in ((ERROR_FILE_ENV, "/tmp/errors.jsonl"), ("RANK", "1")):
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            assert rename_args("train", ["--accelerate_config", "ddp"], PROG) == ["--accelerate_config", "multi_gpu"]
    assert _warnings(capsys) == []


def test_each_script_knows_its_command() -> None:
    """The table is per command: a recipe run as a file (as accelerate runs it) still finds its own."""
    assert command_of(train.main) == "train" and command_of(inspect_data.main) == "inspect"
    assert set(deprecations.FLAG_RENAMES) == set(cli.COMMANDS)
