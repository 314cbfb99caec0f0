"""Experiment 2, stage 5 (docs/experiment/DESIGN2.md): does a hint format's gain predict what SSB gains from it?

Per format: its stage-1 gain (validation split, `select/<format>/teacher_gain.json`), the answers its teacher kept
on stage 2's training questions, and its SSB (KD, seed 0) model's paired difference from the base model on the test
split and on the neighbouring task (stage 4's questions, a normal 95% interval over questions and its p-value). The
chosen format's data and model are stages 2-4's; the other formats' are `run2.sh stage5`'s. A format whose model is
not trained and tested yet is listed as such, so the table can be written while stage 5 runs.

A second table describes each training set's soft labels (and the T = 1 variant's): answer tokens per row, the
probability the teacher gives its own answer's token and the mass its top-K ids hold, at the labels' temperature,
because what KD can teach depends on how peaked these targets are.

    python recipes/experiment/relation.py outputs/experiment2 --output docs/experiment/relation2_results.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import analyze
import choose
import datasets

from ssb_trl.plotting import plot_relation
from ssb_trl.soft_labels.codec import LOGPROB_CODE_DTYPE, decode_logprobs

FORMATS = ("contrastive", "contrastive_short", "correct_solution", "answer_only")
SUITES = {"test": "test split", "neighbour": "products (neighbouring task)"}


def load_suite(root: Path, suite: str) -> dict[str, dict[str, Any]]:
    """Stage 4's models and stage 5's (which hold links to stage 4's base) of one suite, by label."""
    models = analyze.load_models(root / suite)
    if (root / "stage5" / suite).is_dir():
        models.update(analyze.load_models(root / "stage5" / suite))
    return models


def format_rows(root: Path) -> list[dict[str, Any]]:
    """One row per format: its stage-1 gain, its kept training answers and its SSB model's differences from base."""
    chosen, _ = choose.choose_format(choose.load(root / "select"))
    suites = {suite: load_suite(root, suite) for suite in SUITES}
    rows = []
    for name in FORMATS:
        gain = json.loads((root / "select" / name / "teacher_gain.json").read_text())
        data = root / "data" / name if name == chosen else root / "stage5" / "data" / name
        summary_file = data / "ssb_summary.json"
        kept = json.loads(summary_file.read_text())["teacher_kept"] if summary_file.is_file() else None
        label = "ssb-seed0" if name == chosen else f"ssb_{name}-seed0"
        differences = {
            suite: analyze.averaged_difference([models[label]], [models["base"]]) if label in models else None
            for suite, models in suites.items()
        }
        rows.append(
            {"format": name, "chosen": name == chosen, "gain": gain, "kept": kept, "data": data, **differences}
        )
    return rows


def label_shape(data: Path) -> dict[str, float] | None:
    """Means over answer tokens of the stored soft labels: the teacher's probability of the answer's own token
    (0 where it is outside the top K) and the top-K mass; None when the dataset is not written yet."""
    if not (data / "dataset_info.json").is_file():
        return None
    rows = datasets.load_from_disk(str(data))
    metadata = json.loads((data / "ssb_metadata.json").read_text())
    compact = metadata.get("logprob_dtype") == LOGPROB_CODE_DTYPE  # 8-bit codes (format version 2), not log-probs
    own, mass, tokens = [], [], 0
    for ids, mask, top_ids, top_logprobs in zip(
        rows["input_ids"], rows["completion_mask"], rows["teacher_topk_ids"], rows["teacher_topk_logprobs"]
    ):
        answer = [token for token, in_answer in zip(ids, mask) if in_answer]
        tokens += len(answer)
        for token, candidates, logprobs in zip(answer, top_ids, top_logprobs):
            if compact:
                logprobs = decode_logprobs(logprobs).tolist()
            probabilities = dict(zip(candidates, (math.exp(v) for v in logprobs)))
            own.append(probabilities.get(token, 0.0))
            mass.append(sum(probabilities.values()))
    temperature = metadata.get("temperature")
    return {
        "rows": len(rows),
        "tokens_per_row": tokens / max(len(rows), 1),
        "own_token": sum(own) / max(len(own), 1),
        "top_k_mass": sum(mass) / max(len(mass), 1),
        "temperature": temperature,
    }


def shape_table(root: Path, rows: list[dict[str, Any]]) -> str:
    lines = [
        "| training set | T | rows | answer tokens per row | teacher's p(answer token) | top-K mass |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    sets = [(row["format"], row["data"]) for row in rows] + [("answer_only, T = 1 variant", root / "stage5/data/t1")]
    for name, data in sets:
        shape = label_shape(data)
        if shape is not None:
            lines.append(
                f"| {name} | {shape['temperature']} | {shape['rows']} | {shape['tokens_per_row']:.0f} | "
                f"{shape['own_token']:.3f} | {shape['top_k_mass']:.3f} |"
            )
    return "\n".join(lines)


def points(difference: tuple[float, float, float, float] | None) -> str:
    if difference is None:
        return "not trained and tested yet"
    mean, low, high, p = difference
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], p={p:.2g}"


def relation_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| format | stage-1 gain (pts, 95% interval) | kept training answers | SSB seed 0 vs base, test (pts) "
        "| SSB seed 0 vs base, products (pts) |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for row in rows:
        low, high = row["gain"]["gain_interval_points"]
        name = f"{row['format']} (chosen)" if row["chosen"] else row["format"]
        kept = "not prepared yet" if row["kept"] is None else str(row["kept"])
        lines.append(
            f"| {name} | {row['gain']['gain_points']:+.1f} [{low:+.1f}, {high:+.1f}] | {kept} | "
            f"{points(row['test'])} | {points(row['neighbour'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="Experiment 2's output folder (EXPERIMENT2_DIR).")
    parser.add_argument("--output", type=Path, required=True, help="Markdown file to write (the plot goes beside it).")
    args = parser.parse_args()
    rows = format_rows(args.root)
    text = "# Experiment 2, stage 5: each hint format's gain against its SSB model's improvement\n\n"
    text += relation_table(rows) + "\n"
    measured = [row for row in rows if row["test"] is not None]
    if measured:
        plot = plot_relation(
            [
                (
                    row["format"],
                    (row["gain"]["gain_points"], *row["gain"]["gain_interval_points"]),
                    tuple(100 * v for v in row["test"][:3]),
                )
                for row in measured
            ],
            args.output.with_suffix(".png"),
            xlabel="hint gain on the validation split (points, 95% interval)",
            ylabel="SSB seed 0 minus base, test split (points, 95% interval)",
            title="Does the hint's gain predict SSB's improvement? (SmolLM2-135M, basic_arithmetic)",
        )
        text += f"\n![gain vs improvement]({plot.name})\n"
    text += "\n## The soft labels each trained on\n\n" + shape_table(args.root, rows) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
