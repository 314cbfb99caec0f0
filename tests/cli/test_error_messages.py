"""ssb-trl's own errors end a command as one line naming the problem (the traceback with SSB_TRL_DEBUG=1 or
`ssb-trl --debug`); through `accelerate launch` the command ends with the launched process's error and code,
not CalledProcessError; bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssb_trl import errors
from ssb_trl.cli import _exit_code, _signal_name
from ssb_trl.scripts.common import run_script
from ssb_trl.scripts.evaluate import make_parser as make_eval_parser

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


ROOT = Path(__file__).resolve().parents[2]
HINT = "(SSB_TRL_DEBUG=1 shows the traceback)"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop(errors.DEBUG_ENV, None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
    )


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


def _assert_one_line_error(proc: subprocess.CompletedProcess, prog: str, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = _last_line(proc)
    assert last.startswith(f"{prog}: error: ") and last.endswith(HINT), proc.stderr[-3000:]
    assert all(needle in last for needle in needles), last
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr, proc.stderr[-3000:]


def _eval_flags(tmp_path: Path) -> list[str]:
    return ["--models", "bundled:smollm2-135m-instruct", "--output_dir", str(tmp_path / "eval")]


# ---- in this process: which errors are one line ----------------------------------------------------------------


def test_settings_error_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    args = ["--dataset_name", str(tmp_path / "missing.jsonl"), "--limit", "0", *_eval_flags(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda config: None, make_eval_parser(prog="ssb-trl evaluate"), args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ssb-trl evaluate: error: limit must be >= 1 (or unset), got 0. {HINT}"]


def test_error_raised_by_ssb_trl_while_running_is_one_line(tmp_path: Path, capsys) -> None:
    from ssb_trl.soft_labels.io import load_soft_label_dataset

    parser = make_eval_parser(prog="ssb-trl inspect")
    args = ["--dataset_name", "x.jsonl", *_eval_flags(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda config: load_soft_label_dataset(str(tmp_path / "nothing")), parser, args)
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ssb-trl inspect: error: ") and "nothing" in line


def _key_error(config):
    return {}["missing"]


def _value_error_outside_ssb_trl(config):
    return int("not a number")  # raised by the built-in, called from this test file: not ssb-trl's message


@pytest.mark.parametrize("bug", [_key_error, _value_error_outside_ssb_trl])
def test_bugs_and_library_errors_keep_their_traceback(bug, tmp_path: Path) -> None:
    with pytest.raises((KeyError, ValueError)):
        run_script(bug, make_eval_parser(), ["--dataset_name", "x.jsonl", *_eval_flags(tmp_path)])


def test_debug_variable_re_raises_ssb_trl_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        run_script(print, make_eval_parser(), ["--dataset_name", "x.jsonl", "--limit", "0", *_eval_flags(tmp_path)])


def test_rule_counts_the_raising_frame_not_the_type_alone() -> None:
    from ssb_trl.validation import require_integers

    class Settings:  # not a dataclass: dataclasses.fields raises TypeError inside the stdlib
        pass

    try:
        require_integers(Settings())
    except TypeError as error:
        assert not errors.is_input_error(error)
    try:
        from ssb_trl.generation.sampling import Sampling

        Sampling(n=0)
    except ValueError as error:
        assert errors.raised_by_ssb_trl(error) and errors.is_input_error(error)
    assert errors.is_input_error(ValueError("from any code"), while_parsing=True)
    assert errors.is_input_error(yaml.YAMLError("bad YAML"), while_parsing=True)
    assert not errors.is_input_error(KeyError("x"), while_parsing=True)


def test_launched_processes_hand_their_messages_to_the_command(tmp_path: Path, monkeypatch, capsys) -> None:
    error_file = tmp_path / "errors.jsonl"
    monkeypatch.setenv(errors.ERROR_FILE_ENV, str(error_file))
    for _ in range(2):  # two ranks, the same error: the command prints it once
        errors.show_error("train.py", "line one\nline two")
    assert capsys.readouterr().err == ""
    assert errors.launched_errors(error_file) == ["line one\nline two"]
    assert errors.launched_errors(tmp_path / "none.jsonl") == []


def test_a_killed_process_exits_like_in_a_shell() -> None:
    assert _exit_code(-9) == 137 and _exit_code(3) == 3 and _exit_code(0) == 0
    assert _signal_name(9) == "SIGKILL (out of memory?)" and _signal_name(15) == "SIGTERM"


# ---- every way of running a recipe, in a fresh process ---------------------------------------------------------


@pytest.mark.slow
def test_python_m_script_with_yaml_floats_names_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "prep.yaml"
    config.write_text(
        "source: reasoning_gym:basic_arithmetic\nnum_questions: 4\nmodel_name_or_path: bundled:smollm2-135m-instruct\n"
        "num_rollouts: 2.5\nrollout_max_new_tokens: 16.9\n"
    )
    proc = _run(["-m", "ssb_trl.scripts.prepare", "--config", str(config)], tmp_path)
    _assert_one_line_error(proc, "prepare.py", "num_rollouts=2.5", "rollout_max_new_tokens=16.9")


@pytest.mark.slow
def test_recipes_shim_and_in_process_command_show_one_line(tmp_path: Path) -> None:
    flags = ["--dataset_name", str(tmp_path / "missing.jsonl"), *_eval_flags(tmp_path)]
    shim = _run([str(ROOT / "recipes/evaluate.py"), *flags], tmp_path)
    _assert_one_line_error(shim, "evaluate.py", "missing.jsonl")
    command = _run(["-m", "ssb_trl", "evaluate", *flags], tmp_path)
    _assert_one_line_error(command, "ssb-trl evaluate", "missing.jsonl")
    debug = _run(["-m", "ssb_trl", "--debug", "evaluate", *flags], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "missing.jsonl" in _last_line(debug)


def _cpu_ddp_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "ssb_trl/accelerate_configs/ddp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_launched_train_ends_with_the_process_error_not_called_process_error(tmp_path: Path, processes: int) -> None:
    """One process (accelerate's subprocess) and two (torchrun over gloo): the launcher's own lines come first."""
    flags = ["--dataset_name", str(tmp_path / "no_such_data"), "--output_dir", str(tmp_path / "out")]
    flags += ["--use_cpu", "--bf16", "false"]
    if processes == 2:
        flags += ["--config_file", str(_cpu_ddp_config(tmp_path))]
    proc = _run(["-m", "ssb_trl", "train", *flags], tmp_path)
    _assert_one_line_error(proc, "ssb-trl train", "no_such_data", "does not exist")
    assert proc.stderr.count("ssb-trl train: error:") == 1  # both ranks failed alike: said once


@pytest.mark.slow
def test_launched_train_with_debug_shows_the_process_traceback(tmp_path: Path) -> None:
    flags = ["--dataset_name", str(tmp_path / "no_such_data"), "--output_dir", str(tmp_path / "out")]
    proc = _run(["-m", "ssb_trl", "train", *flags, "--use_cpu", "--bf16", "false"], tmp_path, SSB_TRL_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "no_such_data" in proc.stderr
    assert "CalledProcessError" not in proc.stderr
