"""What a preparation run produced: the summary written to ``ssb_summary.json`` and logged as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ssb_trl.jobs.workdir import WorkDir, read_jsonl
from ssb_trl.prepare.config import PrepConfig
from ssb_trl.prepare.hint_gain import NO_GAIN_ADVICE, hint_gain, hinted_outcomes
from ssb_trl.prepare.stages import is_pair
from ssb_trl.tasks.steps import check_arithmetic_steps

SUMMARY_FILENAME = "ssb_summary.json"


@dataclass
class PrepSummary:
    """What a run produced; written to ``ssb_summary.json`` next to the dataset."""

    questions: int = 0
    rollouts: int = 0
    rollouts_correct: int = 0
    rollouts_without_answer: int = 0
    rollouts_truncated: int = 0
    pairs: int = 0
    teacher_questions: int = 0  # questions the teacher was asked about (= pairs unless teacher_unpaired_questions)
    teacher_attempts: int = 0
    teacher_kept: int = 0
    teacher_hint: str = ""
    train_on: str = "teacher_answers"  # what the rows are (PrepConfig.train_on)
    rows_by_kind: dict[str, int] = field(
        default_factory=dict
    )  # right / wrong / cut-short rollouts, or teacher answers
    hint_gain: dict[str, Any] | None = None  # HintGain.to_dict(), None when the check was skipped
    kept_steps_checked: int = 0  # kept answers that write out at least one 'a op b = c'
    kept_with_wrong_step: int = 0  # ... and at least one of them is wrong
    answer_tokens: int = 0
    dataset_bytes: int = 0
    bytes_per_answer_token: float = 0.0
    full_vocab_float32_bytes_per_token: int = 0
    output_dir: str = ""
    generation_backend: str = ""  # the engine of this run (finished shards may have come from another: see records)
    shards_generated: list[int] = field(default_factory=list)  # shards this run generated (in part or whole)
    shards_reused: list[int] = field(default_factory=list)  # shards finished before this run, never regenerated
    # What this run generated with: backend, device, dtype, batch limits, shard size ({} when every shard was reused)
    generation_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows in the dataset: teacher answers, or rollouts with --train_on rollouts / correct_rollouts."""
        return sum(self.rows_by_kind.values())

    @property
    def rollout_accuracy(self) -> float:
        return self.rollouts_correct / self.rollouts if self.rollouts else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rollout_accuracy": self.rollout_accuracy}

    def table(self) -> str:
        rows = [
            ("questions", f"{self.questions}"),
            ("rollouts", f"{self.rollouts}"),
            ("rollout accuracy", f"{self.rollout_accuracy:.1%} ({self.rollouts_correct}/{self.rollouts})"),
            ("rollouts without an answer / cut short", f"{self.rollouts_without_answer} / {self.rollouts_truncated}"),
            ("pairs (questions with a right and a wrong rollout)", f"{self.pairs}"),
            ("teacher hint", self.teacher_hint),
            (
                "rows (train_on " + self.train_on + ")",
                ", ".join(f"{n} {kind}" for kind, n in self.rows_by_kind.items()),
            ),
            ("teacher answers kept / attempts", f"{self.teacher_kept} / {self.teacher_attempts}"),
            ("teacher yield (questions asked with a kept answer)", f"{self.teacher_kept} / {self.teacher_questions}"),
            ("hint gain (hinted vs alone, same questions)", self.hint_gain_line()),
            (
                "teacher answers kept with a wrong arithmetic step",
                f"{self.kept_with_wrong_step} of the {self.kept_steps_checked} that write one out",
            ),
            ("answer tokens", f"{self.answer_tokens}"),
            ("generation backend (this run)", self.generation_backend or self._no_generation()),
            (
                "generation settings (this run)",
                ", ".join(f"{k} {v}" for k, v in self.generation_settings.items()) or "none",
            ),
            ("shards generated / reused", f"{_ranges(self.shards_generated)} / {_ranges(self.shards_reused)}"),
            (
                "bytes per answer token on disk",
                f"{self.bytes_per_answer_token:.0f} (full-vocab float32: {self.full_vocab_float32_bytes_per_token})",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)

    def _no_generation(self) -> str:
        if self.shards_generated:
            return "none (the rows were redone from the saved generations)"
        return "none (every shard reused)"

    def hint_gain_line(self) -> str:
        if self.hint_gain is None:
            if self.train_on != "teacher_answers":
                return f"not measured (train_on {self.train_on}: the teacher writes no answer to compare)"
            return "not measured (hint_check_samples 0, or no question was asked)"
        gain = self.hint_gain
        return (
            f"{gain['hinted_accuracy']:.1%} vs {gain['unhinted_accuracy']:.1%} on {gain['questions']} questions: "
            f"{gain['gain_points']:+.1f} pts [{gain['gain_low']:+.1f}, {gain['gain_high']:+.1f}], {gain['verdict']}"
        )

    def hint_warning(self) -> str | None:
        """A loud warning when the hint's gain is at or below 0 (its interval lies there), else None."""
        if self.hint_gain is None or self.hint_gain["verdict"] != "does not help":
            return None
        return f"HINT GAIN {self.hint_gain_line()}: {NO_GAIN_ADVICE}"


def _ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (or 'none')."""
    spans: list[str] = []
    for shard in sorted(shards):
        if spans and spans[-1].split("-")[-1] == str(shard - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{shard}"
        else:
            spans.append(str(shard))
    return ", ".join(spans) or "none"


def backends_used(work: WorkDir, num_shards: int) -> set[str]:
    """The engines recorded in the shard files ('unrecorded' for a record that names none)."""
    used = set()
    for stage in ("rollouts", "teacher", "hint_check"):
        for shard in range(num_shards):
            used.update(r.get("generated_by", "unrecorded") for r in read_jsonl(work.shard_path(stage, shard)) or [])
    return used


def summarize(work: WorkDir, num_shards: int, config: PrepConfig, vocab_size: int) -> PrepSummary:
    """Count everything from the shard files (so it covers every process's work)."""
    summary = PrepSummary(
        output_dir=str(work.output_dir),
        full_vocab_float32_bytes_per_token=4 * vocab_size,
        teacher_hint=config.hint_identity,
    )
    hinted: dict[str, list[bool]] = {}
    unhinted: dict[str, list[bool]] = {}
    for shard in range(num_shards):
        for record in read_jsonl(work.shard_path("rollouts", shard)) or []:
            summary.questions += 1
            for rollout in record["rollouts"]:
                summary.rollouts += 1
                summary.rollouts_correct += int(rollout["correct"])
                summary.rollouts_without_answer += int(rollout["answer"] is None)
                summary.rollouts_truncated += int(not rollout["finished"])
        for record in read_jsonl(work.shard_path("teacher", shard)) or []:
            summary.pairs += int(is_pair(record["pair"]))
            summary.teacher_questions += int(record["pair"] is not None)
            summary.teacher_attempts += len(record["attempts"])
            if record["kept_attempt"] is not None:
                summary.teacher_kept += 1
                steps = check_arithmetic_steps(record["attempts"][record["kept_attempt"]]["text"])
                summary.kept_steps_checked += int(steps.checked > 0)
                summary.kept_with_wrong_step += int(steps.has_wrong_step)
            if record["pair"] is not None:
                hinted[record["id"]] = hinted_outcomes(record, config.teacher_attempts_in_parallel)
        for record in read_jsonl(work.shard_path("hint_check", shard)) or []:
            if record["unhinted"]:
                unhinted[record["id"]] = [sample["correct"] for sample in record["unhinted"]]
    gain = hint_gain(hinted, unhinted)
    summary.hint_gain = gain.to_dict() if gain is not None else None
    return summary
