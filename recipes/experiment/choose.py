"""The pre-registered choice of difficulty (docs/experiment/DESIGN.md), from validation-split measurements only.

Rule: among the candidates whose hint gain has a 95% interval above zero, the largest lower bound wins. If none
has, the premise of SSB fails on every candidate at this scale; that is reported, and the candidate with the most
kept teacher answers per question wins, so that the experiment can still test SSB as specified.

    python recipes/experiment/choose.py outputs/experiment/select [--name_only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(select_dir: Path) -> dict[str, dict]:
    rows = {}
    for gain_file in sorted(select_dir.glob("*/teacher_gain.json")):
        gain = json.loads(gain_file.read_text())
        summary_file = gain_file.with_name("ssb_summary.json")
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        gain["kept_per_question"] = summary.get("teacher_kept", 0) / max(summary.get("questions", 0), 1)
        gain["teacher_kept"] = summary.get("teacher_kept", 0)
        rows[gain_file.parent.name] = gain
    if not rows:
        raise SystemExit(f"no teacher_gain.json under {select_dir}: run `recipes/experiment/run.sh select` first")
    return rows


def choose(rows: dict[str, dict]) -> tuple[str, str]:
    helped = {name: r for name, r in rows.items() if r["gain_interval_points"][0] > 0}
    if helped:
        name = max(helped, key=lambda n: helped[n]["gain_interval_points"][0])
        return name, "the hint helps (95% interval above 0); largest lower bound"
    name = max(rows, key=lambda n: rows[n]["kept_per_question"])
    return name, "the hint helps on no candidate (no interval above 0); most kept answers per question"


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| candidate | rollout accuracy | paired questions | hinted | unhinted | gain (pts, 95% interval) | kept / question |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, r in rows.items():
        low, high = r["gain_interval_points"]
        lines.append(
            f"| {name} | {r['rollout_accuracy']:.1%} | {r['paired_questions']} | {r['hinted_accuracy']:.1%} | "
            f"{r['unhinted_accuracy']:.1%} | {r['gain_points']:+.1f} [{low:+.1f}, {high:+.1f}] | "
            f"{r['kept_per_question']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("select_dir", type=Path)
    parser.add_argument("--name_only", action="store_true")
    args = parser.parse_args()
    rows = load(args.select_dir)
    name, why = choose(rows)
    if args.name_only:
        print(name)
    else:
        print(table(rows))
        print(f"\nchosen: {name} ({why})")
