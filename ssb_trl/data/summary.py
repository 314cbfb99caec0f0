"""What a preparation run produced: the summary written to ``ssb_summary.json`` and logged as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ssb_trl.data.config import PrepConfig
from ssb_trl.data.workdir import WorkDir, read_jsonl

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
    teacher_attempts: int = 0
    teacher_kept: int = 0
    answer_tokens: int = 0
    dataset_bytes: int = 0
    bytes_per_answer_token: float = 0.0
    full_vocab_float32_bytes_per_token: int = 0
    output_dir: str = ""
    generation_backend: str = ""  # the engine of this run (finished shards may have come from another: see records)
    shards_generated: list[int] = field(default_factory=list)  # shards this run generated (in part or whole)
    shards_reused: list[int] = field(default_factory=list)  # shards finished before this run, never regenerated

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
            ("teacher answers kept / attempts", f"{self.teacher_kept} / {self.teacher_attempts}"),
            ("teacher yield (pairs with a kept answer)", f"{self.teacher_kept} / {self.pairs}"),
            ("answer tokens", f"{self.answer_tokens}"),
            ("generation backend (this run)", self.generation_backend or "none (every shard reused)"),
            ("shards generated / reused", f"{_ranges(self.shards_generated)} / {_ranges(self.shards_reused)}"),
            (
                "bytes per answer token on disk",
                f"{self.bytes_per_answer_token:.0f} (full-vocab float32: {self.full_vocab_float32_bytes_per_token})",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


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
    """The engines recorded in the shard files (runs before 0.3 recorded none: 'unrecorded')."""
    used = set()
    for stage in ("rollouts", "teacher"):
        for shard in range(num_shards):
            used.update(r.get("generated_by", "unrecorded") for r in read_jsonl(work.shard_path(stage, shard)) or [])
    return used


def summarize(work: WorkDir, num_shards: int, config: PrepConfig, vocab_size: int) -> PrepSummary:
    """Count everything from the shard files (so it covers every process's work)."""
    summary = PrepSummary(output_dir=str(work.output_dir), full_vocab_float32_bytes_per_token=4 * vocab_size)
    for shard in range(num_shards):
        for record in read_jsonl(work.shard_path("rollouts", shard)) or []:
            summary.questions += 1
            for rollout in record["rollouts"]:
                summary.rollouts += 1
                summary.rollouts_correct += int(rollout["correct"])
                summary.rollouts_without_answer += int(rollout["answer"] is None)
                summary.rollouts_truncated += int(not rollout["finished"])
        for record in read_jsonl(work.shard_path("teacher", shard)) or []:
            summary.pairs += int(record["pair"] is not None)
            summary.teacher_attempts += len(record["attempts"])
            summary.teacher_kept += int(record["kept_attempt"] is not None)
    return summary
