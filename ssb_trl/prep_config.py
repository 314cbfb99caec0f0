"""Settings of SSB data preparation (:func:`ssb_trl.pipeline.prepare_ssb_data`), TRL-style.

Each field carries a ``help`` string, so ``trl.TrlParser`` turns the dataclass into command-line flags
and YAML keys. The defaults are the embedded demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from ssb_trl.models import BUNDLED_MODEL
from ssb_trl.prompts import DEFAULT_SYSTEM_PROMPT

DEMO_TASK_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
"""reasoning-gym ``basic_arithmetic`` options of the demo: one-digit numbers, two terms."""

# Settings that change how fast a run goes but not what it produces: a resumed run may change them.
RUNTIME_ONLY_FIELDS = frozenset(
    {
        "output_dir",
        "device",
        "generation_batch_size",
        "generation_max_batch_tokens",
        "soft_label_batch_size",
        "vllm_gpu_memory_utilization",
        "push_to_hub",
        "hub_dataset_id",
        "hub_private",
    }
)


@dataclass
class PrepConfig:
    """Every setting of SSB data preparation. The defaults are the embedded demo (bundled SmolLM2 on
    one-digit reasoning-gym arithmetic, a few minutes on a 2-core CPU); ``recipes/configs/`` holds
    settings for real runs."""

    # Model
    model_name_or_path: str = field(
        default=BUNDLED_MODEL,
        metadata={"help": f"Base model (Hub name, local path, or {BUNDLED_MODEL!r}); it is both student and teacher."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer, if not the model's own (it must have a chat template)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16 or float16."})
    device: str | None = field(
        default=None, metadata={"help": "Device; default: this process's accelerator device (CUDA if any), else CPU."}
    )
    # Questions
    source: str = field(
        default="reasoning_gym:basic_arithmetic",
        metadata={
            "help": "Questions: a Hub dataset name, a .jsonl/.json/.parquet/.csv file, or 'reasoning_gym:<task>'."
        },
    )
    source_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset config, e.g. 'main' for gsm8k."}
    )
    source_split: str = field(default="train", metadata={"help": "Dataset split to read."})
    question_field: str = field(default="question", metadata={"help": "Column holding the question."})
    answer_field: str = field(
        default="answer",
        metadata={"help": "Column holding the gold answer (GSM8K '#### x' and '\\boxed{x}' understood)."},
    )
    id_field: str | None = field(default=None, metadata={"help": "Column with unique ids (default: split/row index)."})
    task_config: dict | str | None = field(
        default_factory=lambda: dict(DEMO_TASK_CONFIG),
        metadata={
            "help": "reasoning-gym task options (JSON). The default is the demo's one-digit, two-term arithmetic; "
            "pass '{}' for a task's own defaults."
        },
    )
    num_questions: int | None = field(
        default=32, metadata={"help": "Use the first N questions (reasoning-gym: generate N). None: all."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for reasoning-gym questions, sampling and pairing."})
    # Rollouts (METHOD.md step 1)
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt of student and teacher."}
    )
    num_rollouts: int = field(default=4, metadata={"help": "Student samples per question."})
    rollout_temperature: float = field(default=0.8, metadata={"help": "Rollout sampling temperature."})
    rollout_top_k: int = field(default=50, metadata={"help": "Rollout top-k (0: off)."})
    rollout_top_p: float = field(default=1.0, metadata={"help": "Rollout top-p."})
    rollout_max_new_tokens: int = field(default=192, metadata={"help": "Longest rollout, in new tokens."})
    answer_fallbacks: bool = field(
        default=True,
        metadata={
            "help": "Accept final answers without \\boxed{} ('answer is X', last number) when grading rollouts "
            "and teacher answers. Small models rarely box."
        },
    )
    # Teacher (steps 4-5)
    teacher_temperature: float = field(default=0.4, metadata={"help": "Teacher sampling temperature."})
    teacher_top_k: int = field(default=50, metadata={"help": "Teacher top-k (0: off)."})
    teacher_top_p: float = field(default=1.0, metadata={"help": "Teacher top-p."})
    teacher_max_new_tokens: int = field(
        default=256, metadata={"help": "Longest teacher answer; longer ones are dropped (cut answers do not stop)."}
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
    # Soft labels (step 6)
    soft_label_top_k: int = field(default=64, metadata={"help": "Teacher log-probs stored per answer token (K)."})
    soft_label_temperature: float = field(
        default=2.0, metadata={"help": "Temperature of the stored log-probs (must match training's)."}
    )
    logprob_dtype: str = field(default="float16", metadata={"help": "Stored log-prob dtype: float16 or float32."})
    soft_label_batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced pass."})
    # Engine
    generation_backend: str = field(
        default="transformers", metadata={"help": "transformers, vllm (untested here; needs vLLM) or auto."}
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Most sequences generated at once; None: as many as fit in free GPU memory (64 on CPU)."},
    )
    generation_max_batch_tokens: int | None = field(
        default=None, metadata={"help": "Most padded tokens (prompt + new) per generation batch."}
    )
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "vLLM's share of GPU memory."})
    shard_size: int = field(
        default=16,
        metadata={"help": "Questions per shard: the unit of persistence, resumption and multi-process split."},
    )
    # Output
    output_dir: str = field(default="outputs/ssb_data", metadata={"help": "Where the dataset and the work files go."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub (untested offline)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub dataset as private."})

    def __post_init__(self) -> None:
        if isinstance(self.task_config, str):
            try:
                self.task_config = json.loads(self.task_config) if self.task_config.strip() else None
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"task_config must be JSON, e.g. '{{\"min_digits\": 1}}'; got {self.task_config!r}"
                ) from exc
        checks = [
            (self.num_rollouts >= 2, "num_rollouts must be >= 2 (a pair needs a correct and an incorrect rollout)"),
            (self.teacher_retries >= 0, "teacher_retries must be >= 0"),
            (self.shard_size >= 1, "shard_size must be >= 1"),
            (self.soft_label_top_k >= 1, "soft_label_top_k must be >= 1"),
            (self.soft_label_temperature > 0, "soft_label_temperature must be > 0"),
            (self.logprob_dtype in ("float16", "float32"), "logprob_dtype must be float16 or float32"),
            (self.num_questions is None or self.num_questions >= 1, "num_questions must be >= 1 (or None for all)"),
            (not self.push_to_hub or bool(self.hub_dataset_id), "--push_to_hub needs --hub_dataset_id"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the output (everything except runtime-only knobs)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_ONLY_FIELDS}
