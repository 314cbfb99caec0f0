"""Renamed flags and values keep working for one release, each with one warning line (ssb_trl.deprecations).

The renamed values are the accelerate config names (ssb-trl's own -> TRL's), the renamed flags one name per concept
across the commands (TRL's dataset and vLLM names); each goes through the real parser of its command.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssb_trl import cli, deprecations
from ssb_trl.deprecations import rename_args, rename_config
from ssb_trl.errors import ERROR_FILE_ENV
from ssb_trl.scripts import inspect_data, train
from ssb_trl.scripts.common import command_of, parse_settings

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


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


RENAMED = [  # (command, old flag, value, new field) through each command's real parser
    ("prepare", "source", "q.jsonl", "dataset_name"),
    ("prepare", "source_config_name", "main", "dataset_config"),
    ("prepare", "source_split", "test", "dataset_split"),
    ("prepare", "vllm_server_url", "http://127.0.0.1:8000", "vllm_server_base_url"),
    ("evaluate", "source", "gsm8k", "dataset_name"),
    ("evaluate", "source_split", "test", "dataset_split"),
    ("label", "generation_temperature", "0.7", "teacher_temperature"),
    ("label", "generation_top_k", "5", "teacher_top_k"),
    ("label", "generation_top_p", "0.9", "teacher_top_p"),
    ("label", "max_new_tokens", "64", "teacher_max_new_tokens"),
    ("inspect", "split", "test", "dataset_split"),
]
REQUIRED = {  # what each command needs to parse at all
    "prepare": ["--model_name_or_path", "m"],
    "evaluate": ["--models", "m"],
    "label": ["--dataset_name", "rows.jsonl", "--teacher_model_name_or_path", "t"],
    "inspect": ["--dataset_name", "data"],
}


def _parser(command: str):
    from ssb_trl.scripts import evaluate, label, prepare

    module = {"prepare": prepare, "evaluate": evaluate, "label": label, "inspect": inspect_data}[command]
    return module.make_parser(prog=f"ssb-trl {command}")


@pytest.mark.parametrize("command, old, value, new", RENAMED)
def test_the_flags_renamed_to_one_name_per_concept_work_with_one_warning(capsys, tmp_path, command, old, value, new):
    """One flag per concept across the commands, with TRL's names: the old ones keep working one release."""
    if command == "prepare" and old != "source":
        required = [*REQUIRED[command], "--dataset_name", "q.jsonl"]
    elif command == "evaluate" and old != "source":
        required = [*REQUIRED[command], "--dataset_name", "gsm8k"]
    else:
        required = REQUIRED[command]
    _, (settings, *_) = parse_settings(_parser(command), [*required, f"--{old}", value], command)
    assert str(getattr(settings, new)) == value
    assert _warnings(capsys) == [
        f"ssb-trl {command}: warning: --{old} is renamed --{new}; the old name stops working in 0.3"
    ]
    config = tmp_path / "run.yaml"
    config.write_text(f"{old}: {value}\n")
    _, (settings, *_) = parse_settings(_parser(command), [*required, "--config", str(config)], command)
    assert str(getattr(settings, new)) == value
    assert "the YAML key" in _warnings(capsys)[0]


@pytest.mark.parametrize(
    "command, alias",
    [("prepare", "dataset_train_split"), ("label", "dataset_train_split"), ("evaluate", "dataset_test_split")],
)
def test_trl_split_names_are_accepted_silently(capsys, command, alias) -> None:
    base = {
        "prepare": [*REQUIRED["prepare"], "--dataset_name", "q.jsonl"],
        "evaluate": [*REQUIRED["evaluate"], "--dataset_name", "gsm8k"],
    }
    _, (settings, *_) = parse_settings(
        _parser(command), [*base.get(command, REQUIRED[command]), f"--{alias}", "validation"], command
    )
    assert settings.dataset_split == "validation" and _warnings(capsys) == []


def test_use_vllm_is_trls_switch_for_the_vllm_engine() -> None:
    from ssb_trl.generation.engine import EngineConfig

    assert EngineConfig(use_vllm=True).resolve_backend() == ("vllm", "set by use_vllm")
    assert EngineConfig(use_vllm=True, vllm_server_base_url="http://h:1").resolve_backend()[0] == "vllm_server"
    with pytest.raises(ValueError, match="--use_vllm true asks for vLLM but --generation_backend is 'transformers'"):
        EngineConfig(use_vllm=True, generation_backend="transformers").check_engine()


def test_a_work_folder_recorded_under_the_old_names_resumes_as_the_same_run() -> None:
    from ssb_trl.jobs.resume import upgrade_settings

    recorded = {"kind": "ssb-trl prepare", "config": {"source": "q.jsonl", "source_split": "train", "seed": 1},
                "identities": {}, "inputs": {"count": 1, "shard_sha256": ["x"]}}  # fmt: skip
    upgraded = upgrade_settings(recorded, {}, "ssb-trl prepare")
    assert upgraded["config"] == {"dataset_name": "q.jsonl", "dataset_split": "train", "seed": 1}
