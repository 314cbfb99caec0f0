"""Settings of ``ssb-trl label`` (:func:`ssb_trl.label.label_dataset`), TRL-style, and its table of which stage
each setting feeds.

``LabelConfig`` = the input dataset + the teacher (and optionally the student it is for) + how missing completions
are generated + the fields every job shares (:mod:`ssb_trl.jobs.settings`: output, soft labels) + the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ssb_trl.generation.engine import EngineConfig, served_model_help
from ssb_trl.generation.sampling import Sampling
from ssb_trl.jobs.resume import ResumeTable
from ssb_trl.jobs.settings import ROWS_STAGE, JobSettings, SoftLabelSettings
from ssb_trl.jobs.workdir import Stage
from ssb_trl.validation import require_valid_numbers

TRUNCATED_COMPLETIONS = ("keep", "drop")
TEACHER_FLAG = "--teacher_model_name_or_path"
"""The flag of the model this command runs (named where a message points at it, e.g. a server serving another)."""
STAGES = (Stage("completions", "completions the teacher generated"), Stage(ROWS_STAGE, "soft-label rows"))
COMPLETION_FIELDS = frozenset(
    {
        "teacher_system_prompt",
        "teacher_temperature",
        "teacher_top_k",
        "teacher_top_p",
        "teacher_max_new_tokens",
        "seed",
        "dtype",
        "shard_size",
    }
)
"""Settings the teacher's generated completions depend on; every other setting that determines the output feeds only
the soft labels (K, T, dtype, max_length, the student's tokenizer), which are cheap to redo."""
RESUME_TABLE = ResumeTable(
    default_stage=ROWS_STAGE,
    stage_of=dict.fromkeys(COMPLETION_FIELDS, "completions"),
    identities={
        "teacher": ("model", "completions"),
        "student": ("model", ROWS_STAGE),
        "input": ("input", "completions"),
    },
    # Compared by what they are (the identities) and row by row (the shards' digests) instead.
    compared_by_content=frozenset(
        {
            "dataset_name",
            "dataset_config",
            "dataset_split",
            "num_rows",
            "teacher_model_name_or_path",
            "student_model_name_or_path",
        }
    ),
    defaults={"truncated_completions": "drop"},  # what a run recorded before the setting existed did
)
"""Which stage of a labelling run each setting feeds (see :mod:`ssb_trl.jobs.resume`)."""


@dataclass
class LabelConfig(JobSettings, SoftLabelSettings, EngineConfig):
    """Every setting of ``ssb-trl label``: the input dataset, the teacher (and optionally the student it is for),
    how missing completions are generated, the soft labels, and the run's folder."""

    model_flag: ClassVar[str] = TEACHER_FLAG

    # Input
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset in TRL's prompt-completion or conversational format: a .jsonl/.json/.parquet/.csv file, "
            "a folder of them, a folder written by save_to_disk, or a Hub dataset id. Columns: 'prompt' (messages or "
            "a string) and 'completion' (one assistant message or a string; absent: the teacher writes it), or "
            "'messages' (a conversation: its last assistant message is the completion; a conversation ending with a "
            "user message is completed by the teacher); optional 'teacher_prompt', 'id', 'answer'. A prompt ending "
            "with an assistant message is continued, as in TRL."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to label (a single file is one split)."})
    num_rows: int | None = field(default=None, metadata={"help": "Label the first N rows only (default: all)."})
    # Models
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher: a Hub id, a local folder, or 'bundled:smollm2-135m-instruct'."},
    )
    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The student the labels are for (optional): its tokenizer must be the teacher's (same "
            "vocabulary and chat template: the rows are rendered with the student's template and end with the "
            "teacher's end of turn; checked before any work). Default: the teacher's tokenizer."
        },
    )
    teacher_system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System prompt the teacher sees in place of the prompt's own system message (rows without a "
            "'teacher_prompt'); the student's prompt is unchanged. Default: the teacher sees the student's prompt."
        },
    )
    dtype: str = field(default="auto", metadata={"help": "Teacher dtype: auto, float32, bfloat16 or float16."})
    device: str | None = field(
        default=None, metadata={"help": "Device; default: this process's accelerator device (CUDA if any), else CPU."}
    )
    # Completions written by the teacher (prompts-only datasets)
    teacher_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of generated completions (0: greedy)."}
    )
    teacher_top_k: int = field(default=0, metadata={"help": "Top-k of generated completions (0: off)."})
    teacher_top_p: float = field(default=1.0, metadata={"help": "Top-p of generated completions."})
    teacher_max_new_tokens: int = field(
        default=1024,
        metadata={
            "help": "Longest generated completion; what happens to one cut at this length: truncated_completions."
        },
    )
    truncated_completions: str = field(
        default="keep",
        metadata={
            "help": "What to do with a generated completion cut at teacher_max_new_tokens. keep (default): store it "
            "as far as the teacher wrote it, without an end-of-turn token, so the student learns every token the "
            "teacher wrote and is never taught to stop at the cut; each soft label is still the teacher's own "
            "distribution, its end of turn included. Dropping them loses data and favours short answers (the long "
            "ones are the ones cut). drop: keep only completions the teacher finished. Both are counted in the "
            "summary. Changing it redoes only the soft labels."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of sampled completions (each row seeded by its id)."})
    max_length: int | None = field(
        default=2048,
        metadata={
            "help": "Longest student row (prompt + completion tokens). Longer rows of the dataset are refused, "
            "naming them (cutting a completion would cut its end of turn); generated ones are dropped with a count. "
            "None: no limit but the teacher's context window."
        },
    )
    # Engine
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Most sequences generated at once; None: as many as fit (64 on CPU)."}
    )
    generation_max_batch_tokens: int | None = field(
        default=None, metadata={"help": "Most padded tokens (prompt + new) per generation batch."}
    )
    shard_size: int = field(
        default=64, metadata={"help": "Rows per shard: the unit of persistence, resumption and multi-process split."}
    )
    vllm_server_model: str | None = field(default=None, metadata={"help": served_model_help(TEACHER_FLAG)})
    # Output
    output_dir: str = field(default="labelled_data", metadata={"help": "Where the dataset and the work files go."})

    def __post_init__(self) -> None:
        require_valid_numbers(self)
        checks = [
            (bool(self.dataset_name), "no input: set --dataset_name (a prompt/completion file, folder or Hub id)"),
            (bool(self.teacher_model_name_or_path), "no teacher: set --teacher_model_name_or_path"),
            (self.num_rows is None or self.num_rows >= 1, "num_rows must be >= 1 (or unset for all rows)"),
            (self.max_length is None or self.max_length >= 2, "max_length must be >= 2 (or None for no limit)"),
            (
                self.truncated_completions in TRUNCATED_COMPLETIONS,
                f"truncated_completions must be one of {list(TRUNCATED_COMPLETIONS)}, got {self.truncated_completions!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.check_engine()
        self.check_soft_label_settings()
        self.check_job_settings()
        self.teacher_sampling  # noqa: B018 - validates the sampling settings early

    @property
    def teacher_sampling(self) -> Sampling:
        """How the teacher writes missing completions: one per prompt."""
        return Sampling(
            self.teacher_temperature, self.teacher_top_k, self.teacher_top_p, self.teacher_max_new_tokens, 1
        )
