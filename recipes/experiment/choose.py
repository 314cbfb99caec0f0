"""The pre-registered choices (docs/experiment/DESIGN.md), from validation-split measurements only.

Difficulty: among the candidates whose hint gain has a 95% interval above zero, the largest lower bound wins. If none
has, the premise of SSB fails on every candidate at this scale; that is reported, and the candidate with the most
kept teacher answers per question wins, so that the experiment can still test SSB as specified.

    python recipes/experiment/choose.py outputs/experiment/select [--name_only]

Hint format (experiment 2, docs/experiment/DESIGN2.md): among the formats whose kept answers are mostly sound
(fewer than half hold a wrong written arithmetic step), the largest gain whose 95% interval lies above 0; if none
qualifies, no format is chosen, and that is the result.

    python recipes/experiment/choose.py outputs/experiment2/select --formats [--name_only]

Variant sent to the test split: the best greedy pass@1 among the SSB variants on the validation questions (ties: the
first named).

    python recipes/experiment/choose.py --variant_among ssb_ce05-seed0 ssb_6ep-seed0 outputs/experiment/validate
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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


def wrong_step_share(row: dict) -> float:
    """Kept answers with at least one wrong written step, as a share of all kept answers (0 when none was kept)."""
    return row.get("kept_with_wrong_step", 0) / max(row.get("teacher_kept", 0), 1)


def choose_format(rows: dict[str, dict]) -> tuple[str | None, str]:
    """Experiment 2's rule; (None, why) when no format qualifies."""
    sound = {name: r for name, r in rows.items() if r.get("teacher_kept", 0) and wrong_step_share(r) < 0.5}
    helped = {name: r for name, r in sound.items() if r["gain_interval_points"][0] > 0}
    if helped:
        name = max(helped, key=lambda n: helped[n]["gain_points"])
        return name, "the largest gain with a 95% interval above 0 among formats with mostly sound kept answers"
    return None, (
        f"no format qualifies: {len(sound)} of {len(rows)} have mostly sound kept answers, and none of those has a "
        "gain interval above 0"
    )


def gain_p_value(row: dict) -> float:
    """Two-sided p-value of the normal test behind the gain's 95% interval (its standard error is the half-width
    over 1.96), so that the p printed and the interval never disagree."""
    low, high = row["gain_interval_points"]
    standard_error = (high - low) / 2 / statistics.NormalDist().inv_cdf(0.975)
    if standard_error == 0:
        return float(row["gain_points"] == 0)
    return math.erfc(abs(row["gain_points"]) / standard_error / math.sqrt(2))  # 2 * (1 - Phi(|z|)), no underflow


def format_table(rows: dict[str, dict]) -> str:
    lines = [
        "| format | questions asked | hinted | unhinted | gain (pts, 95% interval) | p | kept / question "
        "| kept with a wrong step |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        low, high = r["gain_interval_points"]
        lines.append(
            f"| {name} | {r['paired_questions']} | {r['hinted_accuracy']:.1%} | {r['unhinted_accuracy']:.1%} | "
            f"{r['gain_points']:+.1f} [{low:+.1f}, {high:+.1f}] | {gain_p_value(r):.2g} | {r['kept_per_question']:.3f} | "
            f"{wrong_step_share(r):.0%} ({r.get('kept_with_wrong_step', 0)} / {r.get('teacher_kept', 0)}) |"
        )
    return "\n".join(lines)


def best_variant(validate_dir: Path, candidates: list[str]) -> str:
    """The candidate with the best greedy pass@1 in <validate_dir>/<candidate>/results.json."""
    scores = {}
    for name in candidates:
        results = validate_dir / name / "results.json"
        if not results.is_file():
            raise SystemExit(f"{results} is missing: run `recipes/experiment/run.sh validate` first")
        scores[name] = json.loads(results.read_text())["models"][0]["metrics"]["pass@1"]["accuracy"]
    return max(candidates, key=lambda name: scores[name])  # max keeps the first of equals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("select_dir", type=Path, help="The selection folder (or, with --variant_among, validation's).")
    parser.add_argument("--name_only", action="store_true")
    parser.add_argument("--formats", action="store_true", help="Choose a hint format (experiment 2's rule).")
    parser.add_argument("--variant_among", nargs="+", help="Print the best of these validated models and stop.")
    args = parser.parse_args()
    if args.variant_among:
        print(best_variant(args.select_dir, args.variant_among))
        raise SystemExit(0)
    rows = load(args.select_dir)
    if args.formats:
        name, why = choose_format(rows)
        if args.name_only:
            print(name or "none")
        else:
            print(format_table(rows))
            print(f"\nchosen: {name or 'none'} ({why})")
        raise SystemExit(0)
    name, why = choose(rows)
    if args.name_only:
        print(name)
    else:
        print(table(rows))
        print(f"\nchosen: {name} ({why})")
