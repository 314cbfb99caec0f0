"""Tables and plots of the SSB experiment from its evaluation folders (one `results.json` per model and suite).

Each model was evaluated on its own (`run.sh` resumes model by model) on the same questions with the same seeds, so
the per-question records pair up across folders. Per suite this writes a markdown table: greedy pass@1 and mean@n
with 95% Wilson intervals, answer length and truncation, and paired exact McNemar tests against the base model,
against SFT (same training seed) and, for a round-2 arm, against its round 1; then, for arms trained with several
seeds, the spread over seeds and the seed-averaged paired difference with a 95% interval over questions.

    python recipes/experiment/analyze.py outputs/experiment/test --output docs/experiment/test_results.md

`--drop_questions_from` (training sets) removes the questions found in them from every model before the tables, the
metrics recomputed from the records that remain: the check for a run whose evaluation excluded fewer training sets
than its arms trained on (experiment 3 excluded only the teacher answers' questions; RESULTS3.md).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from ssb_trl.eval.questions import normalise_question, training_questions
from ssb_trl.plotting import plot_accuracy_bars
from ssb_trl.stats import Z_95, Accuracy, paired_pass1_comparison, summarize_records


def load_models(suite_dir: Path) -> dict[str, dict[str, Any]]:
    """label -> that model's result (with per-question records), from <suite_dir>/<label>/results.json."""
    models = {}
    for path in sorted(suite_dir.glob("*/results.json")):
        report = json.loads(path.read_text())
        for result in report["models"]:
            models[path.parent.name] = {**result, "label": path.parent.name, "benchmark": report["benchmark"]}
    if not models:
        raise SystemExit(f"no <label>/results.json under {suite_dir}: run the evaluation stage first")
    ids = {label: [r["id"] for r in m["records"]] for label, m in models.items()}
    first = next(iter(ids.values()))
    for label, question_ids in ids.items():
        if question_ids != first:
            raise SystemExit(f"{label} was evaluated on other questions than the rest; its folder is stale: delete it")
    return models


def drop_questions(models: dict[str, dict[str, Any]], trained: set[str]) -> list[str]:
    """Remove the (whitespace-normalised) questions in ``trained`` from every model, recomputing its metrics and
    answer lengths from the records left; returns the questions removed (the same for every model)."""
    dropped: list[str] = []
    for model in models.values():
        kept = [r for r in model["records"] if normalise_question(r["question"]) not in trained]
        dropped = [r["question"] for r in model["records"] if normalise_question(r["question"]) in trained]
        if not kept:
            raise SystemExit(f"{model['label']}: every question is in the training sets given to drop")
        num_samples = len(kept[0].get("samples") or [])
        model.update(records=kept, **summarize_records(kept, num_samples))
    return dropped


ROUND2 = "_round2"  # run.sh names a round-2 arm <arm>_round2-seed<N>; its round 1 is <arm>-seed<N>


def arm_and_seed(label: str) -> tuple[str, int | None]:
    match = re.fullmatch(r"(.+)-seed(\d+)", label)
    return (match.group(1), int(match.group(2))) if match else (label, None)


def paired_cell(baseline: dict[str, Any] | None, model: dict[str, Any]) -> str:
    if baseline is None or baseline is model:
        return "-"
    c = paired_pass1_comparison(baseline, model)
    return f"{100 * c['difference']:+.1f} (+{c['only_model_correct']}/-{c['only_baseline_correct']}, p={c['mcnemar_exact_p']:.2g})"


def per_question(model: dict[str, Any]) -> list[float]:
    return [float(r["greedy"]["correct"]) for r in model["records"]]


def averaged_difference(
    arm: list[dict[str, Any]], baseline: list[dict[str, Any]]
) -> tuple[float, float, float, float]:
    """Mean over questions of (arm's pass@1 averaged over its seeds - the baseline's, averaged likewise), the
    bounds of a normal 95% interval over questions (n >= 300 here), and the two-sided p-value of the same test."""
    a = [statistics.fmean(v) for v in zip(*(per_question(m) for m in arm))]
    b = [statistics.fmean(v) for v in zip(*(per_question(m) for m in baseline))]
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    standard_error = statistics.stdev(diffs) / math.sqrt(len(diffs))
    half = Z_95 * standard_error
    p = 2 * statistics.NormalDist().cdf(-abs(mean) / standard_error) if standard_error > 0 else float(mean == 0)
    return mean, mean - half, mean + half, p


def seed_averaged_difference(arm: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str:
    """`averaged_difference` in points: "+d [low, high], p=..."."""
    mean, low, high, p = averaged_difference(arm, baseline)
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], p={p:.2g}"


def suite_table(models: dict[str, dict[str, Any]]) -> str:
    any_model = next(iter(models.values()))
    metric_names = list(dict.fromkeys(name for m in models.values() for name in m["metrics"]))
    base = models.get("base")
    has_round2 = any(ROUND2 in label for label in models)  # a round-2 arm is also compared with its round 1
    lines = [
        f"### {any_model['benchmark']['description']}: {any_model['num_questions']} questions",
        "",
        "| model | "
        + " | ".join(metric_names)
        + " | tokens (greedy, mean) | truncated | vs base | vs SFT (same seed) |"
        + (" vs round 1 |" if has_round2 else ""),
        "| --- | "
        + " | ".join("---:" for _ in metric_names)
        + " | ---: | ---: | ---: | ---: |"
        + (" ---: |" * has_round2),
    ]
    for label, model in models.items():
        arm, seed = arm_and_seed(label)
        sft = models.get(f"sft-seed{seed if seed is not None else 0}")
        greedy_tokens = model["answer_tokens"]["greedy"]
        cells = [
            Accuracy(**model["metrics"][name]).fmt(with_n=False) if name in model["metrics"] else "-"
            for name in metric_names
        ]
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {greedy_tokens['mean']:.1f} | {100 * greedy_tokens['truncated_fraction']:.1f}% | "
            f"{paired_cell(base, model)} | {paired_cell(sft if arm not in ('sft', 'base') else None, model)} |"
            + (f" {paired_cell(models.get(label.replace(ROUND2, '')), model)} |" if has_round2 else "")
        )
    lines += [
        "",
        "Accuracies: value [95% Wilson interval]. Paired columns: greedy pass@1 difference in points (questions won / "
        "lost, exact McNemar p). mean@n intervals count questions, not samples.",
    ]
    arms: dict[str, list[dict[str, Any]]] = {}
    for label, model in models.items():
        arm, seed = arm_and_seed(label)
        if seed is not None:
            arms.setdefault(arm, []).append(model)
    multi_seed = {arm: ms for arm, ms in arms.items() if len(ms) > 1}
    if multi_seed:
        lines += [
            "",
            "| arm (seeds) | pass@1 per seed | mean | vs base, seed-averaged | vs SFT, seed-averaged |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for arm, ms in multi_seed.items():
            values = [100 * m["metrics"]["pass@1"]["accuracy"] for m in ms]
            vs_base = seed_averaged_difference(ms, [base]) if base else "-"
            vs_sft = seed_averaged_difference(ms, multi_seed["sft"]) if arm != "sft" and "sft" in multi_seed else "-"
            lines.append(
                f"| {arm} ({len(ms)}) | {', '.join(f'{v:.1f}' for v in values)} | {statistics.fmean(values):.1f} | "
                f"{vs_base} | {vs_sft} |"
            )
        lines += [
            "",
            "Seed-averaged: per question, the arm's greedy correctness averaged over its seeds minus the other's; mean "
            "over questions with a normal 95% interval over questions and the two-sided p-value of that normal test.",
        ]
    return "\n".join(lines) + "\n"


def pairs_table(models: dict[str, dict[str, Any]], pairs: list[str]) -> str:
    """Named comparisons between arms ("a:b" = a - b), each seed-averaged over the arms' seeds (experiment 3's
    primary comparisons)."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for label, model in models.items():
        arm, seed = arm_and_seed(label)
        arms.setdefault(arm if seed is not None else label, []).append(model)
    lines = ["| comparison | seeds | difference, pts [95% interval], p |", "| --- | --- | ---: |"]
    for pair in pairs:
        first, second = pair.split(":")
        if first not in arms or second not in arms:
            lines.append(f"| {first} - {second} | - | not evaluated yet |")
            continue
        seeds = f"{len(arms[first])} / {len(arms[second])}"
        lines.append(f"| {first} - {second} | {seeds} | {seed_averaged_difference(arms[first], arms[second])} |")
    return "\n".join(["", "Primary comparisons, seed-averaged:", "", *lines]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="+", type=Path, help="Suite folders holding <label>/results.json.")
    parser.add_argument("--output", type=Path, required=True, help="Markdown file to write (plots go beside it).")
    parser.add_argument(
        "--pairs", nargs="*", default=[], help="Arm comparisons A:B (A - B, seed-averaged) for the first suite."
    )
    parser.add_argument(
        "--drop_questions_from",
        nargs="*",
        default=[],
        help="Training sets (saved dataset dirs or data files) whose questions are removed from every suite first.",
    )
    args = parser.parse_args()
    trained = set().union(*(training_questions(path) for path in args.drop_questions_from))
    sections = []
    for suite in args.suites:
        models = load_models(suite)
        dropped = drop_questions(models, trained) if trained else []
        sections.append(suite_table(models))
        if args.drop_questions_from:
            sections[-1] += (
                f"\n{len(dropped)} question(s) found in {', '.join(args.drop_questions_from)} were removed from every "
                f"model first{': ' + '; '.join(dropped) if dropped else '.'}\n"
            )
        if args.pairs and suite == args.suites[0]:
            sections[-1] += pairs_table(models, args.pairs)
        bars = [(label, Accuracy(**m["metrics"]["pass@1"])) for label, m in models.items()]
        plot = args.output.with_name(f"{args.output.stem}_{suite.name}.png")
        plot_accuracy_bars(bars, plot, title=f"{suite.name}: greedy pass@1 (95% Wilson CI)")
        sections[-1] += f"\n![{suite.name}]({plot.name})\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(sections))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
