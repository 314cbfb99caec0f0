"""The experiment's pre-registered choice of difficulty follows its written rule (recipes/experiment/choose.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "experiment"))

import choose  # noqa: E402


def _candidate(folder: Path, name: str, interval: tuple[float, float], kept: int, questions: int = 64) -> None:
    directory = folder / name
    directory.mkdir(parents=True)
    gain = {
        "rollout_accuracy": 0.2,
        "paired_questions": 20,
        "hinted_accuracy": 0.3,
        "unhinted_accuracy": 0.2,
        "gain_points": sum(interval) / 2,
        "gain_interval_points": list(interval),
    }
    (directory / "teacher_gain.json").write_text(json.dumps(gain))
    (directory / "ssb_summary.json").write_text(json.dumps({"teacher_kept": kept, "questions": questions}))


def test_the_largest_lower_bound_above_zero_wins(tmp_path: Path) -> None:
    _candidate(tmp_path, "a", (-5.0, 20.0), kept=30)
    _candidate(tmp_path, "b", (2.0, 10.0), kept=5)
    _candidate(tmp_path, "c", (4.0, 6.0), kept=6)
    name, why = choose.choose(choose.load(tmp_path))
    assert name == "c" and "hint helps" in why
    printed = subprocess.run(
        [sys.executable, str(ROOT / "recipes/experiment/choose.py"), str(tmp_path), "--name_only"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == "c"


def test_without_any_gain_the_best_yield_wins_and_says_so(tmp_path: Path) -> None:
    _candidate(tmp_path, "a", (-5.0, 1.0), kept=10)
    _candidate(tmp_path, "b", (-20.0, -2.0), kept=12)
    name, why = choose.choose(choose.load(tmp_path))
    assert name == "b" and "helps on no candidate" in why
    assert "| b | 20.0% | 20 |" in choose.table(choose.load(tmp_path))


def _validated(folder: Path, name: str, accuracy: float) -> None:
    (folder / name).mkdir(parents=True)
    report = {"models": [{"metrics": {"pass@1": {"accuracy": accuracy}}}]}
    (folder / name / "results.json").write_text(json.dumps(report))


def test_the_variant_with_the_best_validation_pass1_goes_to_test(tmp_path: Path) -> None:
    _validated(tmp_path, "ssb_ce05-seed0", 0.30)
    _validated(tmp_path, "ssb_6ep-seed0", 0.35)
    _validated(tmp_path, "ssb_t1-seed0", 0.35)
    assert choose.best_variant(tmp_path, ["ssb_ce05-seed0", "ssb_6ep-seed0", "ssb_t1-seed0"]) == "ssb_6ep-seed0"
    printed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes/experiment/choose.py"),
            str(tmp_path),
            "--variant_among",
            "ssb_ce05-seed0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == "ssb_ce05-seed0"
