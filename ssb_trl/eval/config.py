"""Settings of an evaluation run: which models, on which questions (a QuestionSource), sampled how (a Sampling).

``EvalConfig`` extends :class:`~ssb_trl.tasks.sources.QuestionSource` and
:class:`~ssb_trl.generation.engine.EngineConfig`, exactly as data preparation's ``PrepConfig`` does: both name their questions with the same fields and grade with the same
``answer_fallbacks``, so evaluation and preparation cannot drift. ``recipes/evaluate.py`` parses it with
``TrlParser`` (YAML keys = field names). Sampling fields are prefixed ``sampling_``: ``temperature`` alone
is the distillation temperature of ``SSBConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssb_trl.generation.engine import EngineConfig
from ssb_trl.generation.sampling import Sampling
from ssb_trl.tasks.prompts import DEFAULT_SYSTEM_PROMPT
from ssb_trl.tasks.sources import QuestionSource
from ssb_trl.validation import require_valid_numbers


@dataclass
class EvalConfig(EngineConfig, QuestionSource):
    """Settings of an evaluation run (the question-source fields, the engine fields, then the models and the
    decoding). The server backend is for data preparation: evaluation runs transformers or a local vLLM engine."""

    source_seed: int = field(
        default=1234,
        metadata={
            "help": "Seed that generates reasoning-gym questions: use one not used for the training data, so the "
            "questions are held out (data preparation's default is 42)."
        },
    )
    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Models to evaluate, in order: Hub ids, local model dirs, PEFT adapter dirs (detected by their "
            "adapter_config.json, loaded on their base model), or 'bundled:smollm2-135m-instruct'. Prefix "
            "'label=' to name a model in the tables, e.g. 'ssb=out/ssb'."
        },
    )
    adapter_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Base model for PEFT adapter dirs, overriding base_model_name_or_path in adapter_config.json "
            "(needed when the adapter was trained on a base that is not loadable by that name)."
        },
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "Evaluate only the first N questions left after exclude_questions_from (default: all)."},
    )
    exclude_questions_from: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Training data whose questions must not be evaluated: saved dataset dirs (e.g. the SSB soft-label "
            "dataset) or .jsonl/.json/.parquet/.csv files, with a 'question' column or a conversational 'prompt' "
            "column. Evaluation questions equal to one of them (whitespace-normalised) are dropped, before `limit`, "
            "and counted in results.json."
        },
    )
    unique_questions: bool = field(
        default=False,
        metadata={
            "help": "Drop repeated questions (whitespace-normalised; the first is kept), before `limit`, and count "
            "them in results.json. Generated tasks with a small question space (short reasoning-gym arithmetic) "
            "repeat questions, which would count one question several times."
        },
    )
    greedy: bool = field(default=True, metadata={"help": "Compute pass@1 with one greedy completion per question."})
    num_samples: int = field(
        default=0,
        metadata={"help": "n for mean@n / pass@n: sampled completions per question (0 = no sampling)."},
    )
    sampling_temperature: float = field(
        default=0.6, metadata={"help": "Sampling temperature for mean@n (must be > 0)."}
    )
    sampling_top_k: int = field(
        default=50,
        metadata={
            "help": "Top-k for sampling (0 = off). 50 (as in the rollouts) changes almost nothing next to top_p=0.95, "
            "and avoids sampling over the full vocabulary, which is slow on CPU."
        },
    )
    sampling_top_p: float = field(default=0.95, metadata={"help": "Nucleus top-p for sampling (1.0 = off)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Maximum tokens per answer; longer ones are cut."})
    batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per generation batch (default: as many as fit on a GPU, 64 on CPU)."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={
            "help": "Student system prompt (default: the one used in training; '' = no system message, for chat "
            "templates without a system role)."
        },
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "Device: auto (cuda if available), cpu, cuda, cuda:0 ..."})
    output_dir: str = field(
        default="eval_results",
        metadata={
            "help": "Where results.json, results.md and accuracy.png go, and each finished model's results "
            "(models/<label>.json): a rerun with the same settings reuses those and evaluates only the others."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Evaluate again, and replace, the models whose saved results in output_dir/models/ (or an older "
            "results.json) were computed with other settings, instead of refusing. Models saved with the same "
            "settings are reused either way (delete output_dir/models/<label>.json to evaluate one again)."
        },
    )
    plot: bool = field(default=True, metadata={"help": "Write the accuracy bar chart (needs matplotlib)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        require_valid_numbers(self)  # also the sampling fields of a greedy-only run, which Sampling never sees
        if isinstance(self.models, str):
            self.models = [self.models]
        if isinstance(self.exclude_questions_from, str):
            self.exclude_questions_from = [self.exclude_questions_from]
        if not self.dataset_name:
            raise ValueError(
                "no question source: set --dataset_name (a benchmark preset, a Hub dataset, a file, or 'reasoning_gym:<task>')"
            )
        if not self.greedy and self.num_samples <= 0:
            raise ValueError("Nothing to compute: set greedy=true (pass@1) and/or num_samples >= 1 (mean@n).")
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}.")
        if self.num_samples > 0 and self.sampling_temperature <= 0:
            raise ValueError("mean@n samples need sampling_temperature > 0; `greedy=true` computes greedy decoding.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or unset), got {self.limit}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1.")
        if self.device != "auto":
            from ssb_trl.models import resolve_device  # torch: only when a device is named

            resolve_device(self.device)  # a GPU this machine lacks is refused before any model is evaluated
        self.check_engine()
        if self.resolve_backend()[0] == "vllm_server":
            raise ValueError(
                "evaluation runs the models itself (--generation_backend transformers or vllm); a server serves one "
                "fixed model, so --vllm_server_base_url is for data preparation only"
            )
        self.greedy_sampling, self.sampling  # noqa: B018 - validates the sampling fields early

    @property
    def greedy_sampling(self) -> Sampling:
        """pass@1: one greedy completion per question."""
        return Sampling(temperature=0.0, max_new_tokens=self.max_new_tokens, n=1)

    @property
    def sampling(self) -> Sampling | None:
        """mean@n / pass@n: ``num_samples`` sampled completions per question, or None without sampling."""
        if self.num_samples == 0:
            return None
        return Sampling(
            self.sampling_temperature, self.sampling_top_k, self.sampling_top_p, self.max_new_tokens, self.num_samples
        )
