"""Settings of SSB data preparation (:func:`ssb_trl.data.prepare_ssb_data`), TRL-style.

``PrepConfig`` = the :class:`~ssb_trl.data.sources.QuestionSource` fields (it extends that dataclass, as
TRL's configs extend ``TrainingArguments``) + the generation engine (:class:`~ssb_trl.data.engine.EngineConfig`)
+ rollout sampling + teacher sampling + soft labels.
Each field carries a ``help`` string, so ``trl.TrlParser`` turns the dataclass into command-line flags and
YAML keys. The two sampling settings are flat, prefixed fields (``rollout_*``, ``teacher_*``) because a
parser cannot nest dataclasses; :attr:`PrepConfig.rollout_sampling` and :attr:`PrepConfig.teacher_sampling`
turn them into :class:`~ssb_trl.data.sampling.Sampling` objects, the only form the stages read.
The defaults are the method's (METHOD.md); the embedded demo's settings are in ``recipes/configs/demo_data.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ssb_trl.contract import LOGPROB_DTYPES, SOFT_LABEL_MODES
from ssb_trl.data.engine import EngineConfig
from ssb_trl.data.prompts import DEFAULT_HINT_FORMAT, DEFAULT_SYSTEM_PROMPT, HINT_FORMATS, HintFormat, load_hint_format
from ssb_trl.data.sampling import Sampling
from ssb_trl.data.sources import QuestionSource
from ssb_trl.validation import require_valid_numbers

# Settings that change how fast a run goes but not what it produces: a resumed run may change them. The engine is
# one of them: finished shards are kept whichever engine made them, and each shard records the engine that did.
RUNTIME_ONLY_FIELDS = frozenset(
    {
        "output_dir",
        "device",
        "generation_batch_size",
        "generation_max_batch_tokens",
        "soft_label_batch_size",
        *(f.name for f in fields(EngineConfig)),
        "push_to_hub",
        "hub_dataset_id",
        "hub_private",
    }
)

# Which stage of a run each output-determining setting feeds; a rerun that changes only settings of later stages
# reuses the earlier stages' files (see ssb_trl.data.pipeline). Every other field that is not runtime-only
# (source, model, seed, rollout sampling, shard_size, ...) feeds the rollouts, the first stage.
STAGES = ("rollouts", "teacher", "hint_check", "rows")
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
HINT_CHECK_FIELDS = frozenset({"hint_check_samples"})
ROWS_FIELDS = frozenset(
    {"soft_label_mode", "soft_label_top_k", "soft_label_draws", "soft_label_temperature", "logprob_dtype"}
)
# Settings that only choose which questions are used: compared question by question (shard by shard) instead.
QUESTION_COUNT_FIELDS = frozenset({"num_questions", "max_question_chars"})


def stage_of(name: str) -> str:
    """The first stage a setting feeds: 'rollouts', 'teacher', 'hint_check' or 'rows'."""
    if name in ROWS_FIELDS:
        return "rows"
    if name in HINT_CHECK_FIELDS:
        return "hint_check"
    return "teacher" if name in TEACHER_FIELDS else "rollouts"


_DEFAULT_TOP_K = 64


@dataclass
class PrepConfig(EngineConfig, QuestionSource):
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
    # Rollouts (METHOD.md steps 1-2)
    num_rollouts: int = field(default=4, metadata={"help": "Student samples per question."})
    rollout_temperature: float = field(default=0.8, metadata={"help": "Rollout sampling temperature."})
    rollout_top_k: int = field(default=50, metadata={"help": "Rollout top-k (0: off)."})
    rollout_top_p: float = field(default=1.0, metadata={"help": "Rollout top-p."})
    rollout_max_new_tokens: int = field(default=1024, metadata={"help": "Longest rollout, in new tokens."})
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
    # Soft labels (step 6)
    soft_label_mode: str = field(
        default="topk",
        metadata={
            "help": "topk: store the teacher's K most probable tokens per answer token (the tail's shape is lost: a "
            "biased target). sampled: store N draws from the teacher's distribution at soft_label_temperature, as "
            "the distinct drawn ids with log(count / N) (Sparse Logit Sampling, arXiv 2503.16870): an unbiased "
            "estimate of the full distribution, N entries per token (format version 3; older ssb-trl cannot read "
            "it). Changing it redoes only the soft labels."
        },
    )
    soft_label_top_k: int = field(
        default=_DEFAULT_TOP_K,
        metadata={"help": "Teacher log-probs stored per answer token (K) in topk mode; sampled mode stores N draws."},
    )
    soft_label_draws: int = field(
        default=32,
        metadata={
            "help": "Draws per answer token (N) in sampled mode, stored as N entries (as many bytes as top-N): "
            "seeded per question from --seed, so a rerun draws the same tokens."
        },
    )
    soft_label_temperature: float = field(
        default=2.0, metadata={"help": "Temperature of the stored log-probs (must match training's)."}
    )
    logprob_dtype: str = field(
        default="float16",
        metadata={
            "help": "Stored log-prob dtype: float16, float32, or uint8 = compact soft labels (format version 2: "
            "8-bit log-prob codes, step 1/16 nat, and ids in uint16 when the vocabulary has <= 65,536 ids; 3 bytes "
            "per top-K entry instead of 6; older ssb-trl cannot read them)."
        },
    )
    soft_label_batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced pass."})
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
    # Output
    output_dir: str = field(default="ssb_data", metadata={"help": "Where the dataset and the work files go."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub (untested offline)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub dataset as private."})

    def __post_init__(self) -> None:
        super().__post_init__()
        require_valid_numbers(self)
        checks = [
            (bool(self.source), "no question source: set --source (a Hub dataset, a file, or 'reasoning_gym:<task>')"),
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
            (self.shard_size >= 1, "shard_size must be >= 1"),
            (self.soft_label_top_k >= 1, "soft_label_top_k must be >= 1"),
            (self.soft_label_mode in SOFT_LABEL_MODES, f"soft_label_mode must be one of {SOFT_LABEL_MODES}"),
            (self.soft_label_draws >= 1, "soft_label_draws must be >= 1 (N draws per answer token)"),
            (
                self.soft_label_mode != "sampled" or self.soft_label_top_k == _DEFAULT_TOP_K,
                f"soft_label_top_k={self.soft_label_top_k} applies to --soft_label_mode topk; sampled soft labels "
                f"store their soft_label_draws (N = {self.soft_label_draws}) draws as N entries per token. For the "
                f"bytes of top-{self.soft_label_top_k}, pass --soft_label_draws {self.soft_label_top_k} and drop "
                "--soft_label_top_k",
            ),
            (self.soft_label_temperature > 0, "soft_label_temperature must be > 0"),
            (self.logprob_dtype in LOGPROB_DTYPES, "logprob_dtype must be float16, float32 or uint8 (compact)"),
            (self.soft_label_batch_size >= 1, "soft_label_batch_size must be >= 1"),
            (
                self.generation_batch_size is None or self.generation_batch_size >= 1,
                "generation_batch_size must be >= 1",
            ),
            (
                self.generation_max_batch_tokens is None or self.generation_max_batch_tokens >= 1,
                "generation_max_batch_tokens must be >= 1 (or unset: no limit)",
            ),
            (not self.push_to_hub or bool(self.hub_dataset_id), "--push_to_hub needs --hub_dataset_id"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.check_engine()
        self.rollout_sampling, self.teacher_sampling, self.hint_format  # noqa: B018 - validates them early

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

    @property
    def hint_format(self) -> HintFormat:
        """The hinted teacher's prompt template (built-in or the user's file)."""
        return load_hint_format(self.teacher_hint)

    @property
    def soft_label_entries(self) -> int:
        """Entries stored per answer token: K in topk mode, N in sampled mode."""
        return self.soft_label_draws if self.soft_label_mode == "sampled" else self.soft_label_top_k

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the output (everything except runtime-only knobs). The hint is recorded as
        what it is (name and version; a file's digest), so an edited template file redoes the teacher answers."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_ONLY_FIELDS}
        settings["teacher_hint"] = self.hint_identity
        if self.soft_label_mode != "sampled":  # unused by top-K labels: changing it must not redo them
            del settings["soft_label_draws"]
        return settings

    @property
    def hint_identity(self) -> str:
        """The hint as recorded: a built-in's name (``name@version`` past its first revision), a file's digest."""
        hint = self.hint_format
        return hint.name if hint.version == f"{hint.name}-v1" else f"{hint.name}@{hint.version}"
