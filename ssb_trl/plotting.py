"""Charts: accuracy bars with 95% CI error bars (evaluation), and training curves from Trainer logs.

Matplotlib is imported lazily with the non-interactive Agg backend so that plotting works on headless
machines (CI, remote GPUs) and importing this module costs nothing when no plot is drawn.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the annotation: plotting imports nothing from the evaluation
    from ssb_trl.stats import Accuracy

DEFAULT_CURVE_KEYS: tuple[str, ...] = ("loss", "kd_loss", "ce_loss")


def _save(fig, path: str | os.PathLike[str]) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    plt = _pyplot()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _pyplot() -> Any:
    """Import pyplot on the Agg backend, with an actionable error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib: `pip install 'ssb-trl[plots]'` (or `pip install matplotlib`)."
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_bars(
    bars: Sequence[tuple[str, Accuracy]], path: str | os.PathLike[str], title: str = "Accuracy (95% Wilson CI)"
) -> Path:
    """Draw grouped bars, one group per model and one colour per metric, with asymmetric CI error bars.

    `bars` are (model label, `ssb_trl.stats.Accuracy`) pairs. Each bar is annotated with its accuracy and
    sample size, so the figure can be read without the table. Returns the PNG path.
    """
    if not bars:
        raise ValueError("plot_accuracy_bars got no bars to draw: evaluate at least one model on one metric first.")
    for group, bar in bars:
        if not (0.0 <= bar.ci_low <= bar.accuracy <= bar.ci_high <= 1.0):
            raise ValueError(
                f"Bar {group!r}/{bar.metric!r} has an inconsistent interval: need 0 <= ci_low <= accuracy <= "
                f"ci_high <= 1, got {bar.ci_low}, {bar.accuracy}, {bar.ci_high}."
            )
    plt = _pyplot()
    groups = list(dict.fromkeys(group for group, _ in bars))
    series = list(dict.fromkeys(bar.metric for _, bar in bars))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 3), 4.2))
    for s_idx, name in enumerate(series):
        xs, ys, lo, hi, labels = [], [], [], [], []
        for g_idx, group in enumerate(groups):
            match = [b for g, b in bars if g == group and b.metric == name]
            if not match:
                continue
            bar = match[0]
            xs.append(g_idx - 0.4 + width * (s_idx + 0.5))
            ys.append(100 * bar.accuracy)
            lo.append(100 * (bar.accuracy - bar.ci_low))
            hi.append(100 * (bar.ci_high - bar.accuracy))
            labels.append(f"{100 * bar.accuracy:.1f}\nn={bar.n}")
        ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=4, label=name, error_kw={"elinewidth": 1})
        for x, y, h, text in zip(xs, ys, hi, labels):
            ax.text(x, y + h + 1.0, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center")
    ax.set_ylabel("accuracy (%)")
    top = max(100 * b.ci_high for _, b in bars)
    ax.set_ylim(0, min(100.0, top + 15) if top > 0 else 10)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_relation(
    points: Sequence[tuple[str, tuple[float, float, float], tuple[float, float, float]]],
    path: str | os.PathLike[str],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """One labelled point per item, (label, (x, x_low, x_high), (y, y_low, y_high)), with its 95% interval on both
    axes and the zero lines: to read whether one measured quantity predicts another (experiment 2: a hint format's
    gain against what SSB gains from it). Returns the PNG path."""
    if not points:
        raise ValueError("plot_relation got no points to draw.")
    for label, (x, x_low, x_high), (y, y_low, y_high) in points:
        if not (x_low <= x <= x_high and y_low <= y <= y_high):
            raise ValueError(
                f"Point {label!r} lies outside its own interval: x {x_low} <= {x} <= {x_high}, "
                f"y {y_low} <= {y} <= {y_high} must hold."
            )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for label, (x, x_low, x_high), (y, y_low, y_high) in points:
        ax.errorbar([x], [y], xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]], fmt="o", capsize=4)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def load_log_history(source: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read `log_history` from a `trainer_state.json` file, or from a run/checkpoint directory that holds one.

    For a run directory without a top-level state, the latest `checkpoint-*` subdirectory is used.
    """
    path = Path(source)
    if path.is_dir():
        candidate = path / "trainer_state.json"
        if not candidate.is_file():
            checkpoints = sorted(
                (p for p in path.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1,
            )
            if not checkpoints:
                raise FileNotFoundError(
                    f"No trainer_state.json in {path} or its checkpoint-* folders: pass the file itself, or a "
                    "Trainer output_dir saved with `trainer.save_state()`."
                )
            candidate = checkpoints[-1] / "trainer_state.json"
        path = candidate
    if not path.is_file():
        raise FileNotFoundError(
            f"Training log {path} does not exist: pass a trainer_state.json or a Trainer output_dir."
        )
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    history = state.get("log_history")
    if not isinstance(history, list):
        raise ValueError(f"{path} has no `log_history` list: is it a transformers Trainer state file?")
    return history


def plot_training_curves(
    runs: Mapping[str, str | os.PathLike[str] | Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    keys: Sequence[str] = DEFAULT_CURVE_KEYS,
    title: str = "Training curves",
) -> Path:
    """Overlay per-step curves of several runs, one panel per logged key (e.g. loss, KD loss), and save a PNG.

    `runs` maps a label to a trainer_state.json path, a run directory, or an already-loaded log_history list.
    Keys that no run logged are skipped; if none of `keys` was logged at all, a ValueError names what was.
    """
    if not runs:
        raise ValueError("plot_training_curves got no runs: pass {label: trainer_state.json or output_dir}.")
    histories = {
        label: load_log_history(src) if isinstance(src, (str, os.PathLike)) else list(src)
        for label, src in runs.items()
    }
    present = [k for k in keys if any(k in rec for h in histories.values() for rec in h if "step" in rec)]
    if not present:
        logged = sorted({k for h in histories.values() for rec in h for k in rec})
        raise ValueError(f"None of the keys {list(keys)} appear in the logs; logged keys are {logged}. Pass `keys=`.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 3.6), squeeze=False)
    for ax, key in zip(axes[0], present):
        for run_index, (label, history) in enumerate(histories.items()):
            points = [
                (rec["step"], float(rec[key]))
                for rec in history
                if key in rec and "step" in rec and isinstance(rec[key], (int, float)) and math.isfinite(rec[key])
            ]
            if points:
                steps, values = zip(*points)
                marker = "o" if len(points) < 30 else None
                # One colour per run across all panels, so a run is recognisable everywhere.
                ax.plot(steps, values, color=f"C{run_index % 10}", marker=marker, markersize=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
