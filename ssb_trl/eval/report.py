"""Evaluation reports: results.md (one row per model, with the settings needed to read it), results.json, chart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ssb_trl.plotting import plot_accuracy_bars
from ssb_trl.stats import Accuracy
from ssb_trl.storage import write_json, write_text


def _fmt_acc(metric: dict[str, Any] | None) -> str:
    return "-" if metric is None else Accuracy(**metric).fmt(with_n=False)


def render_markdown(report: dict[str, Any]) -> str:
    """A results table (one row per model) plus the settings a reader needs to interpret it."""
    cfg = report["config"]
    n = cfg["num_samples"]
    benchmark = report["benchmark"]
    metric_names = (["pass@1"] if cfg["greedy"] else []) + ([f"mean@{n}", f"pass@{n}"] if n > 0 else [])
    headers = ["model", *metric_names]
    if cfg["greedy"]:
        headers += ["greedy tokens (mean)", "greedy truncated"]
    if n > 0:
        headers += ["sampled tokens (mean)"]
    headers.append("questions")
    lines = [
        f"### {benchmark['description']}: {benchmark['evaluated']} questions",
        "",
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |",
    ]
    for result in report["models"]:
        row = [result["label"]]
        row += [_fmt_acc(result["metrics"].get(name)) for name in metric_names]
        if cfg["greedy"]:
            greedy = result["answer_tokens"]["greedy"]
            row += [f"{greedy['mean']:.1f}", f"{100 * greedy['truncated_fraction']:.0f}%"]
        if n > 0:
            row += [f"{result['answer_tokens']['sampled']['mean']:.1f}"]
        row.append(str(result["num_questions"]))
        lines.append("| " + " | ".join(row) + " |")
    notes = ["Accuracies: value [95% Wilson interval] over the listed number of questions."]
    if cfg["greedy"]:
        notes.append("pass@1: one greedy completion per question.")
    if n > 0:
        notes.append(
            f"mean@{n}: mean accuracy of {n} samples per question (temperature {cfg['sampling_temperature']}, top_k "
            f"{cfg['sampling_top_k']}, top_p {cfg['sampling_top_p']}); its interval counts questions, not samples "
            "(conservative). "
            f"pass@{n}: a question counts if any sample is correct."
        )
    notes.append(
        f"Answer length: generated tokens incl. end-of-turn, max_new_tokens={cfg['max_new_tokens']} "
        "(truncated = hit that limit)."
    )
    overlap = benchmark.get("excluded_overlap")
    if overlap:
        notes.append(
            f"{overlap['count']} evaluation question(s) also found in the training data "
            f"({', '.join(overlap['from'])}) were dropped before evaluation."
        )
    if benchmark.get("duplicates_dropped"):
        notes.append(f"{benchmark['duplicates_dropped']} repeated question(s) were dropped before evaluation.")
    comparisons = report.get("comparisons") or []
    if comparisons:
        notes.append(
            "Paired pass@1 vs "
            + comparisons[0]["baseline"]
            + ": "
            + "; ".join(
                f"{c['model']} {100 * c['difference']:+.1f} pts ({c['only_model_correct']} questions won, "
                f"{c['only_baseline_correct']} lost, exact McNemar p={c['mcnemar_exact_p']:.3g})"
                for c in comparisons
            )
            + "."
        )
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def accuracy_bars(report: dict[str, Any]) -> list[tuple[str, Accuracy]]:
    """Bars for the accuracy chart: one group per model, one bar per metric."""
    return [(result["label"], Accuracy(**m)) for result in report["models"] for m in result["metrics"].values()]


def write_report(report: dict[str, Any], output_dir: str | os.PathLike[str], plot: bool = True) -> dict[str, Path]:
    """Write results.json (everything, per-question records included), results.md, and accuracy.png."""
    out = Path(output_dir)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    write_json(paths["json"], report, sort_keys=False)
    if report["models"]:
        write_text(paths["markdown"], render_markdown(report))
        if plot:
            benchmark = report["benchmark"]
            paths["plot"] = plot_accuracy_bars(
                accuracy_bars(report),
                out / "accuracy.png",
                title=f"{benchmark['description']}: {benchmark['evaluated']} questions",
            )
    return paths
