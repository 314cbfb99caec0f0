"""The `ssb-trl` command: declared as a console script, dispatches to the recipes, resolves accelerate configs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ssb_trl import cli

REPO = Path(__file__).resolve().parents[1]


def test_console_script_is_declared_and_prints_the_commands() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ssb-trl"]
    assert script.value == "ssb_trl.cli:main"
    proc = subprocess.run([sys.executable, "-m", "ssb_trl"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in ("prepare", "train", "evaluate"))


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate"])
def test_each_command_shows_its_own_flags(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ssb_trl", command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert f"usage: ssb-trl {command}" in proc.stdout and "--config" in proc.stdout


def test_accelerate_config_names_resolve_to_shipped_files(tmp_path: Path) -> None:
    path = cli.accelerate_config_path("deepspeed_zero3")
    assert Path(path).is_file() and Path(path).parent == REPO / "ssb_trl" / "accelerate_configs"
    own = tmp_path / "mine.yaml"
    own.write_text("num_processes: 2\n")
    assert cli._launch_args(["--accelerate_config", str(own), "--num_processes", "2"]) == [
        "--config_file",
        str(own),
        "--num_processes",
        "2",
    ]
    with pytest.raises(SystemExit, match="deepspeed_zero2"):  # the error lists the shipped names
        cli.accelerate_config_path("zero9")


def test_flags_for_accelerate_are_taken_out_of_the_script_arguments() -> None:
    args = ["--config", "a.yaml", "--num_processes", "2", "--seed", "3"]
    assert cli._without(args, ["--num_processes", "2"]) == ["--config", "a.yaml", "--seed", "3"]
