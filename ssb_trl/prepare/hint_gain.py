"""The hint's gain: is the hinted teacher more accurate than the same model alone, on the questions it answered?

SSB's premise is that it is: soft labels from a teacher no better than the student carry nothing the student does
not already know (docs/experiment: for SmolLM2-135M the paper's hint made it *worse*, -24 points). Preparation
therefore samples, for each question the teacher was asked about, fresh unhinted answers with the teacher's own
sampling settings (the rollouts are a biased sample: a pair needs a right one) and compares question by question.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from ssb_trl.stats import Z_95, wilson_interval

NO_GAIN_ADVICE = (
    "the hint does not help this model: SSB cannot beat its data. Try another --teacher_hint (contrastive_short, "
    "correct_solution, answer_only, or your own template file), or train SFT on the kept answers "
    "(--kd_weight 0 --ce_weight 1)"
)


@dataclass
class HintGain:
    """Hinted vs unhinted accuracy (finished and graded correct) on the same questions, and their difference."""

    questions: int
    hinted_correct: int
    hinted_attempts: int
    unhinted_correct: int
    unhinted_attempts: int
    gain_points: float  # mean over questions of (hinted share - unhinted share), in percentage points
    gain_low: float  # 95% normal interval over questions
    gain_high: float

    @property
    def hinted_accuracy(self) -> float:
        return self.hinted_correct / self.hinted_attempts

    @property
    def unhinted_accuracy(self) -> float:
        return self.unhinted_correct / self.unhinted_attempts

    @property
    def verdict(self) -> str:
        """'helps' (interval above 0), 'hurts or no help' (at or below 0) or 'unclear' (it straddles 0)."""
        if self.gain_low > 0:
            return "helps"
        return "does not help" if self.gain_high <= 0 else "unclear"

    def to_dict(self) -> dict[str, Any]:
        hinted_low, hinted_high = wilson_interval(self.hinted_correct, self.hinted_attempts)
        unhinted_low, unhinted_high = wilson_interval(self.unhinted_correct, self.unhinted_attempts)
        return {
            **asdict(self),
            "hinted_accuracy": self.hinted_accuracy,
            "hinted_interval": [hinted_low, hinted_high],
            "unhinted_accuracy": self.unhinted_accuracy,
            "unhinted_interval": [unhinted_low, unhinted_high],
            "verdict": self.verdict,
            "note": "accuracy = finished and graded correct; gain = mean over questions of (hinted - unhinted) "
            "share, 95% normal interval over questions",
        }

    def line(self) -> str:
        """One line for logs and tables."""
        return (
            f"hinted {self.hinted_accuracy:.1%} ({self.hinted_correct}/{self.hinted_attempts}) vs unhinted "
            f"{self.unhinted_accuracy:.1%} ({self.unhinted_correct}/{self.unhinted_attempts}) on {self.questions} "
            f"questions: {self.gain_points:+.1f} pts [{self.gain_low:+.1f}, {self.gain_high:+.1f}]"
        )


def hint_gain(hinted: dict[str, list[bool]], unhinted: dict[str, list[bool]]) -> HintGain | None:
    """The gain over the questions present in both (each with at least one attempt); None when there are none."""
    ids = sorted(i for i in hinted.keys() & unhinted.keys() if hinted[i] and unhinted[i])
    if not ids:
        return None
    differences = [statistics.mean(hinted[i]) - statistics.mean(unhinted[i]) for i in ids]
    mean = statistics.mean(differences)
    half = Z_95 * statistics.stdev(differences) / math.sqrt(len(ids)) if len(ids) > 1 else math.inf
    return HintGain(
        questions=len(ids),
        hinted_correct=sum(sum(hinted[i]) for i in ids),
        hinted_attempts=sum(len(hinted[i]) for i in ids),
        unhinted_correct=sum(sum(unhinted[i]) for i in ids),
        unhinted_attempts=sum(len(unhinted[i]) for i in ids),
        gain_points=100 * mean,
        gain_low=100 * (mean - half),
        gain_high=100 * (mean + half),
    )


def hinted_outcomes(teacher_record: dict[str, Any], attempts_in_parallel: bool) -> list[bool]:
    """The teacher's attempts that measure its accuracy without bias: all of them when they were sampled at once;
    only the first when attempts stopped at the first correct one (later attempts exist only after a failure)."""
    attempts = teacher_record["attempts"] if attempts_in_parallel else teacher_record["attempts"][:1]
    return [bool(attempt["correct"]) for attempt in attempts]
