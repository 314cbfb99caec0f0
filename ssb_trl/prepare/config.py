"""Settings of SSB data preparation (:func:`ssb_trl.prepare.prepare_ssb_data`), TRL-style.

``PrepConfig`` = the :class:`~ssb_trl.tasks.sources.QuestionSource` fields (it extends that dataclass, as
TRL's configs extend ``TrainingArguments``) + the generation engine (:class:`~ssb_trl.generation.engine.EngineConfig`)
+ rollout sampling + teacher sampling + soft labels.
Each field carries a ``help`` string, so ``trl.TrlParser`` turns the dataclass into command-line flags and
YAML keys. The two sampling settings are flat, prefixed fields (``rollout_*``, ``teacher_*``) because a
parser cannot nest dataclasses; :attr:`PrepConfig.rollout_sampling` and :attr:`PrepConfig.teacher_sampling`
turn them into :class:`~ssb_trl.generation.sampling.Sampling` objects, the only form the stages read.
The defaults are the method's (docs/METHOD.md); the embedded demo's settings are in ``recipes/configs/demo_data.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ssb_trl.generation.engine import EngineConfig
from ssb_trl.generation.sampling import Sampling
from ssb_trl.jobs.resume import ResumeTable
from ssb_trl.jobs.settings import ROWS_STAGE, SOFT_LABEL_FIELDS, JobSettings, SoftLabelSettings
from ssb_trl.jobs.workdir import Stage
from ssb_trl.tasks.prompts import (
    DEFAULT_HINT_FORMAT,
    DEFAULT_SYSTEM_PROMPT,
    HINT_FORMATS,
    PROMPT_TEMPLATE_VERSION,
    HintFormat,
    load_hint_format,
)
from ssb_trl.tasks.sources import QuestionSource
from ssb_trl.validation import require_valid_numbers

TRAIN_ON = ("teacher_answers", "rollouts", "correct_rollouts")
"""What preparation's rows hold: the hinted teacher's answers (SSB), the student's rollouts under the hinted teacher's
soft labels (on-policy SSB), or the student's verified rollouts (rejection-sampling fine-tuning)."""
STAGES = (
    Stage("rollouts", "rollouts"),
    Stage("teacher", "teacher answers"),
    Stage("hint_check", "hint check (unhinted answers)"),
    Stage(ROWS_STAGE, "soft-label rows"),
)
TEACHER_FIELDS = frozenset(
    {
        "teacher_hint",
        "teacher_unpaired_questions",
        "teacher_temperature",
        "teacher_top_k",
        "teacher_top_p",
        "teacher_max_new_tokens",
        "teacher_retries",
        "teacher_attempts_in_parallel",
    }
)
RESUME_TABLE = ResumeTable(
    default_stage="rollouts",  # source, model, seed, rollout sampling, shard_size, ... feed the first stage
    stage_of={
        **dict.fromkeys(TEACHER_FIELDS, "teacher"),
        "hint_check_samples": "hint_check",
        **dict.fromkeys(SOFT_LABEL_FIELDS, ROWS_STAGE),
        "train_on": ROWS_STAGE,  # the rollouts and any teacher answers stay; only the rows are redone
    },
    identities={"model": ("model", "rollouts"), "source": ("input", "rollouts")},
    # Compared by what they are (the identities) and question by question (the shards' digests) instead.
    compared_by_content=frozenset(
        {"dataset_name", "model_name_or_path", "tokenizer_name_or_path", "num_questions", "max_question_chars"}
    ),
)
"""Which stage of a preparation each setting feeds (see :mod:`ssb_trl.jobs.resume`)."""


@dataclass
class PrepConfig(JobSettings, SoftLabelSettings, EngineConfig, QuestionSource):
    """Every setting of SSB data preparation: where the questions come from (the ``QuestionSource`` fields),
    the engine (the ``EngineConfig`` fields), the model, the rollouts, the hinted teacher and the soft labels."""

    # Model
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Base model (Hub name, local path, or 'bundled:smollm2-135m-instruct'); student and teacher."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer, if not the model's own (it must have a chat template)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16 or float16."})
    device: str | None = field(
        default=None, metadata={"help": "Device; default: this process's accelerator device (CUDA if any), else CPU."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of rollout and teacher sampling and of pairing."})
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt of student and teacher ('' for none)."}
    )
    # Rollouts (docs/METHOD.md steps 1-2)
    num_rollouts: int = field(default=4, metadata={"help": "Student samples per question."})
    rollout_temperature: float = field(default=0.8, metadata={"help": "Rollout sampling temperature."})
    rollout_top_k: int = field(default=50, metadata={"help": "Rollout top-k (0: off)."})
    rollout_top_p: float = field(default=1.0, metadata={"help": "Rollout top-p."})
    rollout_max_new_tokens: int = field(default=1024, metadata={"help": "Longest rollout, in new tokens."})
    # What the rows are
    train_on: str = field(
        default="teacher_answers",
        metadata={
            "help": "What the student trains on. teacher_answers: the hinted teacher's verified answers, with its "
            "soft labels (SSB, the paper's method). rollouts: on-policy SSB: every rollout of each question the hint "
            "applies to (right, wrong and cut short, as the student wrote them) with the hinted teacher's soft labels "
            "on the student's tokens; no teacher answer is generated. correct_rollouts: rejection-sampling fine-tuning "
            "(RFT): the student's own verified, finished rollouts of every question (exact repeats once), for "
            "--kd_weight 0 --ce_weight 1; their soft labels are the student's own (no hint: one cheap forward pass). "
            "Changing it reuses the rollouts (and teacher answers) and redoes only the rows."
        },
    )
    # Teacher (steps 3-5)
    teacher_hint: str = field(
        default=DEFAULT_HINT_FORMAT,
        metadata={
            "help": "How the teacher is hinted: "
            + ", ".join(HINT_FORMATS)
            + " (contrastive: the paper's right and wrong attempt; contrastive_short: the same, few words; "
            "correct_solution: the right attempt only; answer_only: the verified answer only), or a template file "
            "with the fields {question} {correct} {incorrect} {answer}. Changing it reuses the rollouts."
        },
    )
    teacher_unpaired_questions: bool = field(
        default=False,
        metadata={
            "help": "Also ask the teacher about questions without a right-and-wrong pair when the hint needs no "
            "wrong attempt: correct_solution then serves every question with a correct rollout, answer_only every "
            "question (STaR's rationalisation; on SmolLM2-135M: 2.8x the kept answers, but more of them right answers "
            "after wrong steps). Off: SSB's paired questions only, the same for every hint."
        },
    )
    teacher_temperature: float = field(default=0.4, metadata={"help": "Teacher sampling temperature."})
    teacher_top_k: int = field(default=50, metadata={"help": "Teacher top-k (0: off)."})
    teacher_top_p: float = field(default=1.0, metadata={"help": "Teacher top-p."})
    teacher_max_new_tokens: int = field(
        default=2048, metadata={"help": "Longest teacher answer; longer ones are dropped (cut answers do not stop)."}
    )
    teacher_retries: int = field(
        default=3, metadata={"help": "Extra teacher attempts per pair, for answers that were wrong or cut short."}
    )
    teacher_attempts_in_parallel: bool = field(
        default=True,
        metadata={
            "help": "Sample all 1 + teacher_retries attempts at once (fast on batch hardware); false: one round "
            "at a time, only for pairs still without a correct answer (least compute)."
        },
    )
    hint_check_samples: int = field(
        default=2,
        metadata={
            "help": "Unhinted answers per question the teacher was asked about, sampled with the teacher's settings, "
            "to measure the hint's gain (hinted vs unhinted accuracy, in the summary and the metadata); 0: skip."
        },
    )
    # Engine
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Most sequences generated at once; None: as many as fit in free GPU memory (64 on CPU)."},
    )
    generation_max_batch_tokens: int | None = field(
        default=None, metadata={"help": "Most padded tokens (prompt + new) per generation batch."}
    )
    shard_size: int = field(
        default=16,
        metadata={
            "help": "Questions per shard: the unit of persistence, resumption and multi-process split, and the most "
            "questions in one generation batch (16 fills a CPU; on a GPU use 256)."
        },
    )
    output_dir: str = field(default="ssb_data", metadata={"help": "Where the dataset and the work files go."})

    def __post_init__(self) -> None:
        super().__post_init__()
        require_valid_numbers(self)
        checks = [
            (
                bool(self.dataset_name),
                "no question source: set --dataset_name (a Hub dataset, a file, or 'reasoning_gym:<task>')",
            ),
            (bool(self.model_name_or_path), "no model: set --model_name_or_path (it is both student and teacher)"),
            (self.num_rollouts >= 2, "num_rollouts must be >= 2 (a pair needs a correct and an incorrect rollout)"),
            (
                self.rollout_temperature != 0 and self.rollout_top_k != 1,
                f"rollout_temperature={self.rollout_temperature} with rollout_top_k={self.rollout_top_k} is greedy "
                f"decoding: the {self.num_rollouts} rollouts of a question would be identical, so none could ever be "
                "paired (a pair needs a correct and an incorrect one). Sample: --rollout_temperature > 0 (0.8 is the "
                "default) and --rollout_top_k 0 or > 1",
            ),
            (self.teacher_retries >= 0, "teacher_retries must be >= 0"),
            (self.hint_check_samples >= 0, "hint_check_samples must be >= 0 (0 skips the hint check)"),
            (self.train_on in TRAIN_ON, f"train_on must be one of {list(TRAIN_ON)}, got {self.train_on!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.check_engine()
        self.check_soft_label_settings()
        self.check_job_settings()
        self.rollout_sampling, self.teacher_sampling, self.hint_format  # noqa: B018 - validates them early

    @property
    def generates_teacher_answers(self) -> bool:
        """Whether the teacher writes answers (and the hint check runs): only when the rows are its answers."""
        return self.train_on == "teacher_answers"

    @property
    def rollout_sampling(self) -> Sampling:
        """Student rollouts: ``num_rollouts`` samples per question."""
        return Sampling(
            self.rollout_temperature,
            self.rollout_top_k,
            self.rollout_top_p,
            self.rollout_max_new_tokens,
            self.num_rollouts,
        )

    @property
    def teacher_sampling(self) -> Sampling:
        """Hinted teacher: ``1 + teacher_retries`` attempts per pair."""
        return Sampling(
            self.teacher_temperature,
            self.teacher_top_k,
            self.teacher_top_p,
            self.teacher_max_new_tokens,
            1 + self.teacher_retries,
        )

    @cached_property
    def hint_format(self) -> HintFormat:
        """The hinted teacher's prompt template (built-in or the user's file, read once per run)."""
        return load_hint_format(self.teacher_hint)

    def recorded_values(self) -> dict[str, Any]:
        """The hint as what it is (name and version; a file's digest), so an edited template file redoes the teacher
        answers; and the version of the student prompt, which the rollouts depend on."""
        return {"teacher_hint": self.hint_identity, "prompt_template_version": PROMPT_TEMPLATE_VERSION}

    @property
    def hint_identity(self) -> str:
        """The hint as recorded: a built-in's name (``name@version`` past its first revision), a file's digest."""
        hint = self.hint_format
        return hint.name if hint.version == f"{hint.name}-v1" else f"{hint.name}@{hint.version}"
