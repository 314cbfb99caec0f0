"""Statistics of an evaluation: accuracies with 95% Wilson intervals, pass@1 / mean@n / pass@n, paired tests.

SSB claims better accuracy *without longer answers*, so every accuracy travels with its sample size and
interval (the embedded demo scores only tens of questions), answer lengths are summarised alongside, and
two models on the same questions are compared pairwise (exact McNemar test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%).

    Chosen over the normal (Wald) interval because it stays inside [0, 1] and keeps near-nominal coverage at the
    small n and extreme p (0% on AIME) this project sees. `successes` may be fractional (a mean of per-question
    accuracies times n), which is how mean@n is given a conservative interval over questions.
    """
    if n <= 0:
        raise ValueError(f"Wilson interval needs n >= 1 trials, got n={n}.")
    if not 0 <= successes <= n:
        raise ValueError(f"Wilson interval needs 0 <= successes <= n, got successes={successes}, n={n}.")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp float round-off so that low <= p <= high holds exactly at p = 0 and p = 1.
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


@dataclass
class Accuracy:
    """An accuracy with what it was computed on, so no figure is reported without its sample size and interval."""

    metric: str
    accuracy: float
    successes: float
    n: int
    ci_low: float
    ci_high: float
    unit: str = "questions"
    note: str = ""

    @classmethod
    def from_counts(cls, metric: str, successes: float, n: int, unit: str = "questions", note: str = "") -> Accuracy:
        """Build the record and its 95% Wilson interval from a success count."""
        low, high = wilson_interval(successes, n)
        return cls(metric, successes / n, successes, n, low, high, unit, note)

    def fmt(self, with_n: bool = True) -> str:
        """Short human form: `42.0% [31.2, 53.6] (n=50)`."""
        text = f"{100 * self.accuracy:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}]"
        return f"{text} (n={self.n})" if with_n else text


def _length_stats(completions: Sequence[dict[str, Any]]) -> dict[str, float]:
    lengths = sorted(c["num_tokens"] for c in completions)
    n = len(lengths)
    return {
        "mean": sum(lengths) / n,
        "median": (lengths[(n - 1) // 2] + lengths[n // 2]) / 2,
        "max": float(lengths[-1]),
        "truncated_fraction": sum(not c["finished"] for c in completions) / n,
        "no_answer_fraction": sum(c["extracted"] is None for c in completions) / n,
    }


def summarize_records(records: Sequence[dict[str, Any]], num_samples: int) -> dict[str, Any]:
    """Aggregate per-question records into pass@1 / mean@n / pass@n with Wilson intervals and length statistics.

    pass@1 and pass@n are proportions of questions (Wilson over questions). mean@n is the mean of per-question
    sample accuracies; samples of one question are correlated, so its interval uses the number of questions as
    the sample size (conservative: a per-question accuracy in [0, 1] has variance at most p(1-p)), not n x samples.
    """
    if not records:
        raise ValueError("No per-question records to summarize.")
    n_q = len(records)
    metrics: dict[str, Accuracy] = {}
    lengths: dict[str, dict[str, float]] = {}
    greedy = [r["greedy"] for r in records if r.get("greedy") is not None]
    if greedy:
        if len(greedy) != n_q:
            raise ValueError("Some records lack a greedy completion; records must be all-or-none greedy.")
        metrics["pass@1"] = Accuracy.from_counts(
            "pass@1", sum(c["correct"] for c in greedy), n_q, note="greedy decoding, one completion per question"
        )
        lengths["greedy"] = _length_stats(greedy)
    if num_samples > 0:
        samples = [r.get("samples") or [] for r in records]
        if any(len(s) != num_samples for s in samples):
            raise ValueError(f"Every record needs exactly {num_samples} samples for mean@{num_samples}.")
        per_question = [sum(c["correct"] for c in s) / num_samples for s in samples]
        total_correct = sum(sum(c["correct"] for c in s) for s in samples)
        metrics[f"mean@{num_samples}"] = Accuracy.from_counts(
            f"mean@{num_samples}",
            sum(per_question),
            n_q,
            note=f"{total_correct} of {n_q * num_samples} samples correct; 95% CI over the {n_q} questions",
        )
        metrics[f"pass@{num_samples}"] = Accuracy.from_counts(
            f"pass@{num_samples}",
            sum(any(c["correct"] for c in s) for s in samples),
            n_q,
            note=f"question counted correct if any of its {num_samples} samples is",
        )
        lengths["sampled"] = _length_stats([c for s in samples for c in s])
    return {"num_questions": n_q, "metrics": {k: asdict(v) for k, v in metrics.items()}, "answer_tokens": lengths}


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test with p=1/2 on the discordant pairs."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_pass1_comparison(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Compare two models' greedy verdicts question by question (same questions, so the test is paired).

    With tens of questions, unpaired intervals overlap almost always; the discordant counts and the exact McNemar
    p-value say whether the difference is more than noise.
    """
    a = {r["id"]: bool(r["greedy"]["correct"]) for r in baseline["records"]}
    b = {r["id"]: bool(r["greedy"]["correct"]) for r in other["records"]}
    if a.keys() != b.keys():
        raise ValueError("Paired comparison needs both models scored on the same questions.")
    only_baseline = sum(a[q] and not b[q] for q in a)
    only_other = sum(b[q] and not a[q] for q in a)
    return {
        "baseline": baseline["label"],
        "model": other["label"],
        "metric": "pass@1",
        "difference": (only_other - only_baseline) / len(a),
        "only_model_correct": only_other,
        "only_baseline_correct": only_baseline,
        "n": len(a),
        "mcnemar_exact_p": mcnemar_exact_p(only_baseline, only_other),
    }
