"""Experiment 3's learning-rate rule (docs/experiment/DESIGN3.md): per arm, the learning rate with the highest
validation pass@1 (seed 0); a tie (equal counts) goes to the smaller learning rate.

Reads <validation>/<arm>-lr<lr>-seed0/results.json, writes the picks as JSON and a markdown table.

    python recipes/experiment/lr_picks.py outputs/experiment3/validation --json outputs/experiment3/picks.json \
        --output docs/experiment/lr3_results.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ssb_trl.stats import Accuracy

_LABEL = re.compile(r"(?P<arm>.+)-lr(?P<lr>[0-9.e-]+)-seed0")


def validation_runs(folder: Path) -> dict[str, dict[float, dict]]:
    """arm -> learning rate -> its pass@1 metrics (accuracy, correct, n, interval)."""
    runs: dict[str, dict[float, dict]] = {}
    for path in sorted(folder.glob("*/results.json")):
        match = _LABEL.fullmatch(path.parent.name)
        if match is None:
            continue
        model = json.loads(path.read_text())["models"][0]
        runs.setdefault(match["arm"], {})[float(match["lr"])] = model["metrics"]["pass@1"]
    if not runs:
        raise SystemExit(f"no <arm>-lr<lr>-seed0/results.json under {folder}: run `run3.sh lr` first")
    return runs


def picks(runs: dict[str, dict[float, dict]]) -> dict[str, float]:
    """The rule: the most correct answers; among equals, the smallest learning rate."""
    return {arm: min(by_lr, key=lambda lr: (-by_lr[lr]["successes"], lr)) for arm, by_lr in runs.items()}


def render(runs: dict[str, dict[float, dict]], chosen: dict[str, float]) -> str:
    lines = [
        "| arm | learning rate | validation pass@1 [95% Wilson] | pick |",
        "| --- | ---: | --- | --- |",
    ]
    for arm, by_lr in runs.items():
        for lr in sorted(by_lr):
            mark = "**picked**" if lr == chosen[arm] else ""
            lines.append(f"| {arm} | {lr:g} | {Accuracy(**by_lr[lr]).fmt()} | {mark} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("validation", type=Path, help="The folder of the validation evaluations.")
    parser.add_argument("--json", type=Path, required=True, help="Where the picks go (arm -> learning rate).")
    parser.add_argument("--output", type=Path, required=True, help="The markdown table.")
    args = parser.parse_args()
    runs = validation_runs(args.validation)
    chosen = picks(runs)
    args.json.write_text(json.dumps(chosen, indent=2, sort_keys=True))
    table = render(runs, chosen)
    args.output.write_text("# Experiment 3: learning-rate picks (validation, seed 0)\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
