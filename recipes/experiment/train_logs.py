"""The training dynamics of every run of an experiment, from each run's `trainer_state.json` log history.

Per run: the logged metrics (loss, kd_loss, ce_loss, top1_agreement, grad_norm, learning_rate) averaged over the
first and the last tenth of its steps, and their extremes, so the dynamics can be read without rerunning.

    python recipes/experiment/train_logs.py outputs/experiment3/train --output docs/experiment/train3_logs.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("loss", "kd_loss", "ce_loss", "top1_agreement", "grad_norm")


def summarize(history: list[dict]) -> dict[str, dict[str, float]]:
    """metric -> {first: mean of the first tenth of the logged steps, last: of the last tenth, min, max}."""
    steps = [entry for entry in history if "loss" in entry and "step" in entry]
    tenth = max(1, len(steps) // 10)
    out = {}
    for metric in METRICS:
        values = [entry[metric] for entry in steps if isinstance(entry.get(metric), (int, float))]
        if values:
            out[metric] = {
                "first": statistics.fmean(values[:tenth]),
                "last": statistics.fmean(values[-tenth:]),
                "min": min(values),
                "max": max(values),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path, help="The folder of the training runs (<run>/trainer_state.json).")
    parser.add_argument("--output", type=Path, required=True, help="The markdown table (and .json beside it).")
    args = parser.parse_args()
    runs = {}
    for path in sorted(args.train.glob("*/trainer_state.json")):
        state = json.loads(path.read_text())
        runs[path.parent.name] = {"steps": state.get("global_step"), **summarize(state.get("log_history", []))}
    lines = [
        "| run | steps | " + " | ".join(f"{m} first -> last" for m in METRICS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in METRICS) + " |",
    ]
    for name, summary in runs.items():
        cells = [f"{summary[m]['first']:.3f} -> {summary[m]['last']:.3f}" if m in summary else "-" for m in METRICS]
        lines.append(f"| {name} | {summary['steps']} | " + " | ".join(cells) + " |")
    text = (
        "# Training dynamics, per run\n\nMeans over the first and the last tenth of each run's logged steps "
        f"(`{Path(__file__).name}`; min and max in the JSON beside this file).\n\n" + "\n".join(lines) + "\n"
    )
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps(runs, indent=2))
    print(text)


if __name__ == "__main__":
    main()
