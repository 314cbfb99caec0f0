"""The `ssb-trl` command: declared as a console script, dispatches to the recipes, resolves accelerate configs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ssb_trl import cli
from ssb_trl.soft_labels.io import save_soft_label_dataset
from tests.helpers import build_soft_label_dataset, make_tiny_model

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


REPO = Path(__file__).resolve().parents[2]


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
    assert f"usage: ssb-trl {command}" in proc.stdout and "--output_dir" in proc.stdout


TRL_ACCELERATE_CONFIGS = ("zero1", "zero2", "zero3", "fsdp1", "fsdp2", "multi_gpu", "single_gpu")


def test_accelerate_config_names_are_trls_and_resolve_to_their_files(tmp_path: Path) -> None:
    import importlib.resources

    trl_configs = importlib.resources.files("trl.accelerate_configs")
    for name in TRL_ACCELERATE_CONFIGS:  # TRL's shipped configs, found by TRL's own resolver
        assert Path(cli.accelerate_config_path(name)) == Path(str(trl_configs.joinpath(f"{name}.yaml")))
    offload = Path(cli.accelerate_config_path("zero3_offload"))  # the one TRL does not ship
    assert offload.is_file() and offload == REPO / "ssb_trl" / "accelerate_configs" / "zero3_offload.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("num_processes: 2\n")
    assert cli._launch_args(["--accelerate_config", str(own), "--num_processes", "2"]) == [
        "--config_file",
        str(own),
        "--num_processes",
        "2",
    ]
    with pytest.raises(SystemExit, match=r"neither a file nor one of \['fsdp1', .*'zero3', 'zero3_offload'\]"):
        cli.accelerate_config_path("zero9")


def test_flags_for_accelerate_are_taken_out_of_the_script_arguments() -> None:
    args = ["--config", "a.yaml", "--num_processes", "2", "--seed", "3"]
    assert cli._without(args, ["--num_processes", "2"]) == ["--config", "a.yaml", "--seed", "3"]


def test_inspect_reports_the_dataset_and_decodes_a_row(tmp_path: Path, tokenizer, tokenizer_dir: str) -> None:
    import numpy as np

    from ssb_trl.soft_labels.io import save_soft_label_dataset
    from tests.helpers import build_soft_label_dataset, make_tiny_model

    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=5, top_k=8)
    save_soft_label_dataset(dataset, str(tmp_path / "data"), metadata)
    dataset_bytes = sum(f.stat().st_size for f in (tmp_path / "data").glob("data-*.arrow"))  # its rows, no JSON
    (tmp_path / "data" / "ssb_work").mkdir()  # a preparation's shard copies: not part of the dataset's size
    (tmp_path / "data" / "ssb_work" / "rows.arrow").write_bytes(b"0" * 1_000_000)
    out = tmp_path / "stats.json"
    argv = ["inspect", str(tmp_path / "data"), "--tokenizer_name_or_path", tokenizer_dir]  # the dataset positional
    proc = subprocess.run(
        [sys.executable, "-m", "ssb_trl", *argv, "--row", "1", "--output_json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    stats = json.loads(out.read_text())
    lengths = [len(ids) for ids in dataset["teacher_topk_ids"]]
    masses = np.concatenate([np.exp(np.array(lp)).sum(-1) for lp in dataset["teacher_topk_logprobs"]])
    assert stats["rows"] == 5 and stats["answer_tokens"] == sum(lengths) and stats["top_k"] == 8
    assert stats["top_k_mass_percentiles"]["p50"] == pytest.approx(float(np.median(masses)), rel=1e-6)
    assert stats["bytes_per_answer_token"]["on_disk"] == pytest.approx(dataset_bytes / sum(lengths))
    answer = [t for t, m in zip(dataset[1]["input_ids"], dataset[1]["completion_mask"]) if m]
    assert f"Row 1: {len(dataset[1]['input_ids']) - len(answer)} prompt tokens, {len(answer)} answer tokens" in (
        proc.stdout
    )
    assert repr(tokenizer.decode([answer[0]])) in proc.stdout  # the first answer token, decoded


def test_inspect_takes_the_dataset_as_its_positional_argument(tmp_path: Path) -> None:
    from ssb_trl.scripts.inspect_data import make_parser

    data = str(tmp_path)
    for argv in ([data], ["--row", "2", data], [data, "--row", "2"], ["--dataset_name", data, "--row", "2"]):
        (args,) = make_parser(prog="ssb-trl inspect").parse_args_and_config(argv)
        assert args.dataset_name == data and args.row == (2 if "--row" in argv else 0)
    with pytest.raises(SystemExit):  # two datasets: argparse refuses, as for any stray argument
        make_parser(prog="ssb-trl inspect").parse_args_and_config([data, data])


def test_version_prints_the_installed_version() -> None:
    """`ssb-trl --version` printed the help."""
    from importlib.metadata import version

    import ssb_trl

    proc = subprocess.run([sys.executable, "-m", "ssb_trl", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"ssb-trl {version('ssb-trl')}\n", proc.stdout + proc.stderr
    assert ssb_trl.__version__ == version("ssb-trl")  # read from the package metadata, one place to bump


def test_the_docs_speak_of_the_version_pyproject_sets() -> None:
    """The package said 0.1.0 while the docs spoke of 0.2 (what was renamed in it, what stops working after it)."""
    import re

    from ssb_trl.deprecations import REMOVED_IN

    (version,) = re.findall(r'^version = "(\d+\.\d+)\.\d+"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    changes = (REPO / "docs" / "CHANGES.md").read_text()
    newest = max(
        re.findall(r"^## .* in (\d+\.\d+)", changes, re.MULTILINE), key=lambda v: tuple(map(int, v.split(".")))
    )
    assert newest == version == "0.2"
    major, minor = map(int, version.split("."))
    assert REMOVED_IN == f"{major}.{minor + 1}"  # old names work for one release


def test_inspect_of_a_split_a_one_split_folder_lacks_is_refused(tmp_path: Path, tokenizer, tokenizer_dir: str) -> None:
    """`ssb-trl inspect --split test` showed the train rows as if they were the test split."""
    from ssb_trl.scripts.inspect_data import InspectArguments, main

    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=4, top_k=8)
    save_soft_label_dataset(dataset, str(tmp_path / "data"), metadata)
    arguments = {"dataset_name": str(tmp_path / "data"), "tokenizer_name_or_path": tokenizer_dir}
    with pytest.raises(
        ValueError, match=r"holds one split, read as 'train'; it has no split 'test'.*--dataset_split.* and inspect"
    ):
        main(InspectArguments(**arguments, dataset_split="test"))
    assert main(InspectArguments(**arguments))["rows"] == 4
