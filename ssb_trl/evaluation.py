"""Evaluate one or more models on a math benchmark: pass@1 (greedy), mean@n and pass@n (sampled), answer length.

Why this module exists: SSB claims better accuracy *without longer answers*, so an honest evaluation has to report
accuracy with its uncertainty (95% Wilson intervals and sample sizes, since the embedded demo scores only tens of
questions), the mean answer length in tokens, and keep per-question records so any figure can be audited.
Models are prompted with exactly the student prompt used in training (`ssb_trl.prompts.student_messages`) and
graded with `ssb_trl.grading.grade`, so evaluation and data preparation cannot drift apart.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


# --------------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------------


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

    def fmt(self) -> str:
        """Short human form: `42.0% [31.2, 53.6] (n=50)`."""
        return f"{100 * self.accuracy:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] (n={self.n})"


# --------------------------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkPreset:
    """Where a public benchmark lives on the Hub and which columns hold the question and the gold answer."""

    name: str
    dataset_name: str
    dataset_config: str | None
    split: str
    question_field: str
    answer_field: str
    description: str


# Names and fields checked against the dataset cards; they need Hub access, so they are untested offline here.
BENCHMARK_PRESETS: dict[str, BenchmarkPreset] = {
    "gsm8k": BenchmarkPreset(
        "gsm8k", "openai/gsm8k", "main", "test", "question", "answer", "GSM8K test (1,319); gold after '####'"
    ),
    "math500": BenchmarkPreset(
        "math500", "HuggingFaceH4/MATH-500", None, "test", "problem", "answer", "MATH-500 test (500 problems)"
    ),
    "aime2024": BenchmarkPreset(
        "aime2024", "HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "AIME 2024 I+II (30 problems)"
    ),
    "aime2024_maxwell": BenchmarkPreset(
        "aime2024_maxwell",
        "Maxwell-Jia/AIME_2024",
        None,
        "train",
        "Problem",
        "Answer",
        "AIME 2024 I+II (30 problems), Maxwell-Jia copy",
    ),
}
SOURCE_BENCHMARKS = ("hub", "local", "reasoning_gym")
BENCHMARK_CHOICES = (*BENCHMARK_PRESETS, *SOURCE_BENCHMARKS)


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Settings of an evaluation run (parsed by `recipes/evaluate.py` with `TrlParser`, so YAML keys = field names)."""

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
    benchmark: str = field(
        default="reasoning_gym",
        metadata={
            "help": "What to evaluate on: a preset (gsm8k, math500, aime2024, aime2024_maxwell: loaded from the Hub) "
            "or a source: 'hub' (dataset_name + fields), 'local' (dataset_name = a .jsonl/.json/.parquet/.csv file), "
            "'reasoning_gym' (rg_task, rg_seed, rg_size).",
            "choices": list(BENCHMARK_CHOICES),
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (benchmark=hub) or local file path (benchmark=local)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name, if any."})
    dataset_split: str | None = field(
        default=None, metadata={"help": "Dataset split (default: the preset's, else test)."}
    )
    question_field: str | None = field(
        default=None, metadata={"help": "Column holding the question (default: the preset's, else 'question')."}
    )
    answer_field: str | None = field(
        default=None, metadata={"help": "Column holding the gold answer (default: the preset's, else 'answer')."}
    )
    rg_task: str = field(
        default="basic_arithmetic", metadata={"help": "reasoning-gym task name (benchmark=reasoning_gym)."}
    )
    rg_config: str | None = field(
        default=None,
        metadata={
            "help": "reasoning-gym task settings as a JSON object (a mapping in YAML), e.g. '{\"max_terms\": 3}'."
        },
    )
    rg_seed: int = field(
        default=1234,
        metadata={"help": "reasoning-gym seed: use one not used for training data, so questions are held out."},
    )
    rg_size: int = field(default=50, metadata={"help": "Number of reasoning-gym questions to generate."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N questions."})
    exclude_questions_from: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Training data whose questions must not be evaluated: saved dataset dirs (e.g. the SSB soft-label "
            "dataset) or .jsonl/.json/.parquet/.csv files, with a 'question' column or a conversational 'prompt' "
            "column. Evaluation questions equal to one of them (whitespace-normalised) are dropped, before `limit`, "
            "and counted in results.json."
        },
    )
    greedy: bool = field(default=True, metadata={"help": "Compute pass@1 with one greedy completion per question."})
    num_samples: int = field(
        default=0,
        metadata={"help": "n for mean@n / pass@n: sampled completions per question (0 = no sampling)."},
    )
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature for mean@n (must be > 0)."})
    top_k: int = field(
        default=50,
        metadata={
            "help": "Top-k for sampling (0 = off). 50 (as in the rollouts) changes almost nothing next to top_p=0.95, "
            "and avoids sampling over the full vocabulary, which is slow on CPU."
        },
    )
    top_p: float = field(default=0.95, metadata={"help": "Nucleus top-p for sampling (1.0 = off)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Maximum tokens per answer; longer ones are cut."})
    batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per generation batch (default: as many as fit on a GPU, 64 on CPU)."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Student system prompt (default: the one used in training, ssb_trl.prompts.DEFAULT_SYSTEM_PROMPT; "
            "'' = no system message, for chat templates without a system role)."
        },
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "Device: auto (cuda if available), cpu, cuda, cuda:0 ..."})
    output_dir: str = field(
        default="eval_results", metadata={"help": "Where results.json, results.md and accuracy.png go."}
    )
    plot: bool = field(default=True, metadata={"help": "Write the accuracy bar chart (needs matplotlib)."})

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [self.models]
        if isinstance(self.exclude_questions_from, str):
            self.exclude_questions_from = [self.exclude_questions_from]
        if self.benchmark not in BENCHMARK_CHOICES:
            raise ValueError(
                f"Unknown benchmark {self.benchmark!r}. Use a preset ({', '.join(BENCHMARK_PRESETS)}) or a source "
                f"({', '.join(SOURCE_BENCHMARKS)})."
            )
        if self.benchmark in ("hub", "local") and not self.dataset_name:
            raise ValueError(
                f"benchmark={self.benchmark} needs dataset_name "
                f"({'a Hub dataset id' if self.benchmark == 'hub' else 'a path to a .jsonl/.json/.parquet/.csv file'})."
            )
        if not self.greedy and self.num_samples <= 0:
            raise ValueError("Nothing to compute: set greedy=true (pass@1) and/or num_samples >= 1 (mean@n).")
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}.")
        if self.num_samples > 0 and self.temperature <= 0:
            raise ValueError("mean@n samples need temperature > 0; greedy decoding is what `greedy=true` computes.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or unset), got {self.limit}.")
        if self.max_new_tokens < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError("max_new_tokens and batch_size must be >= 1.")
        if isinstance(self.rg_config, str):
            try:
                parsed = json.loads(self.rg_config)
            except json.JSONDecodeError as exc:
                raise ValueError(f"rg_config must be a JSON object, got {self.rg_config!r}: {exc}") from exc
            if not isinstance(parsed, dict):
                raise ValueError(f"rg_config must be a JSON object (mapping), got {self.rg_config!r}.")
            self.rg_config = parsed  # type: ignore[assignment]

    @property
    def rg_config_dict(self) -> dict[str, Any]:
        """reasoning-gym settings as a dict (YAML gives a mapping, the CLI a JSON string)."""
        return dict(self.rg_config or {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------

_LABEL_RE = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")


@dataclass
class ModelSpec:
    """A model to evaluate: its table label, what the user passed, and (for PEFT adapters) the base it sits on."""

    label: str
    name_or_path: str
    adapter_base: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.adapter_base is not None


def _default_label(name_or_path: str) -> str:
    if name_or_path.startswith("bundled:"):
        return name_or_path.split(":", 1)[1]
    path = Path(name_or_path)
    if path.exists():
        return path.resolve().name
    return name_or_path.rstrip("/").split("/")[-1]


def parse_model_specs(models: Sequence[str], adapter_base_model: str | None = None) -> list[ModelSpec]:
    """Turn `--models` entries into specs, detecting PEFT adapter dirs; fails fast on bad entries, before loading.

    An entry may be `label=name_or_path`. A local directory holding `adapter_config.json` is an adapter: its base
    is `adapter_base_model` if given, else the adapter's recorded `base_model_name_or_path`.
    """
    from ssb_trl.models import BUNDLED_MODEL

    if not models:
        raise ValueError("No models to evaluate: pass --models, e.g. --models bundled:smollm2-135m-instruct out/ssb")
    specs: list[ModelSpec] = []
    for entry in models:
        match = _LABEL_RE.match(entry)
        label, target = (match.group(1), match.group(2)) if match and not Path(entry).exists() else (None, entry)
        if target.startswith("bundled:") and target != BUNDLED_MODEL:
            raise ValueError(f"Unknown bundled model {target!r}; the only bundled model is {BUNDLED_MODEL!r}.")
        path = Path(target).expanduser()
        adapter_base = None
        if path.exists():
            target = str(path)
            if path.is_dir() and (path / "adapter_config.json").is_file():
                with open(path / "adapter_config.json", encoding="utf-8") as f:
                    adapter_cfg = json.load(f)
                adapter_base = adapter_base_model or adapter_cfg.get("base_model_name_or_path")
                if not adapter_base:
                    raise ValueError(
                        f"Adapter {path} does not record its base model (base_model_name_or_path is empty): "
                        "pass --adapter_base_model NAME_OR_PATH."
                    )
            elif path.is_dir() and not (path / "config.json").is_file():
                raise ValueError(
                    f"{path} is a directory but holds neither config.json (a saved model) nor adapter_config.json "
                    "(a PEFT adapter); point --models at the saved model or adapter directory."
                )
            elif path.is_file():
                raise ValueError(f"{path} is a file; --models takes model directories, Hub ids or {BUNDLED_MODEL!r}.")
        elif target.startswith((".", "/", "~")) or target.count("/") > 1:
            raise FileNotFoundError(f"Model path {target!r} does not exist (and is not a Hub id like 'org/name').")
        specs.append(ModelSpec(label or _default_label(target), target, adapter_base))
    labels = [s.label for s in specs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(f"Duplicate model labels {duplicates}: name them with 'label=path' entries in --models.")
    return specs


def check_models_loadable(specs: Sequence[ModelSpec]) -> None:
    """Read each model's config (cheap) so that an unreachable model fails before any model is evaluated."""
    from transformers import AutoConfig

    from ssb_trl.models import BUNDLED_MODEL, bundled_gguf_path

    for spec in specs:
        for name in [spec.adapter_base] if spec.is_adapter else [spec.name_or_path]:
            if name == BUNDLED_MODEL:
                bundled_gguf_path()
                continue
            try:
                AutoConfig.from_pretrained(name)
            except Exception as exc:  # any loading failure: re-raised with the fix
                role = f"base model of adapter {spec.name_or_path!r}" if spec.is_adapter else "model"
                fix = " For an adapter, --adapter_base_model overrides the recorded base." if spec.is_adapter else ""
                raise ValueError(
                    f"Cannot load the config of {role} {name!r} (for {spec.label!r}): {type(exc).__name__}: {exc}. "
                    "Pass an existing local directory, or a Hub id with network access (unset HF_HUB_OFFLINE) or "
                    f"already in the local cache.{fix}"
                ) from exc


def load_eval_model(spec: ModelSpec, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """Load a model for generation; a PEFT adapter is loaded on its base and merged (same outputs, faster decoding)."""
    from ssb_trl.models import load_model_and_tokenizer, load_tokenizer

    if not spec.is_adapter:
        return load_model_and_tokenizer(spec.name_or_path, dtype=dtype, device=device)
    from peft import PeftModel

    logger.info("Loading adapter %s on base model %s", spec.name_or_path, spec.adapter_base)
    model, tokenizer = load_model_and_tokenizer(spec.adapter_base, dtype=dtype, device=device)
    adapter_dir = Path(spec.name_or_path)
    if (adapter_dir / "tokenizer_config.json").is_file():
        # The trainer saves its processing class next to the adapter; prefer it (same vocab, maybe a new pad token).
        tokenizer = load_tokenizer(str(adapter_dir))
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------------------------


class EvaluationDataError(ValueError):
    """The evaluation set cannot be scored (unknown source, missing fields, no gold answers)."""


def describe_benchmark(config: EvalConfig) -> dict[str, Any]:
    """Resolve the benchmark choice into a concrete source description (also recorded in results.json)."""
    if config.benchmark in BENCHMARK_PRESETS:
        preset = BENCHMARK_PRESETS[config.benchmark]
        return {
            "benchmark": preset.name,
            "source_type": "hub",
            "dataset_name": config.dataset_name or preset.dataset_name,
            "dataset_config": config.dataset_config or preset.dataset_config,
            "split": config.dataset_split or preset.split,
            "question_field": config.question_field or preset.question_field,
            "answer_field": config.answer_field or preset.answer_field,
            "description": preset.description,
        }
    if config.benchmark == "reasoning_gym":
        return {
            "benchmark": f"reasoning_gym:{config.rg_task}",
            "source_type": "reasoning_gym",
            "task": config.rg_task,
            "task_config": config.rg_config_dict,
            "seed": config.rg_seed,
            "size": config.rg_size,
            "description": f"reasoning-gym {config.rg_task} (seed {config.rg_seed})",
        }
    source_type = "file" if config.benchmark == "local" else "hub"
    return {
        "benchmark": config.benchmark,
        "source_type": source_type,
        "dataset_name": config.dataset_name,
        "dataset_config": config.dataset_config,
        "split": config.dataset_split or ("train" if source_type == "file" else "test"),
        "question_field": config.question_field or "question",
        "answer_field": config.answer_field or "answer",
        "description": f"{'local file' if source_type == 'file' else 'Hub dataset'} {config.dataset_name}",
    }


def _normalise_question(text: Any) -> str:
    return " ".join(str(text).split())


def _question_of_prompt(prompt: Any) -> str | None:
    """The question in a TRL prompt: a plain string, or the last user turn of conversational messages."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    return None


def training_questions(path: str | os.PathLike[str]) -> set[str]:
    """Whitespace-normalised questions of a training set (saved dataset dir or data file), for overlap removal."""
    import datasets

    from ssb_trl.sources import LOCAL_FILE_BUILDERS

    p = Path(path).expanduser()
    if not p.exists():
        raise EvaluationDataError(f"exclude_questions_from: {str(p)!r} does not exist.")
    if p.is_dir():
        try:
            loaded = datasets.load_from_disk(str(p))
        except FileNotFoundError as exc:
            raise EvaluationDataError(
                f"exclude_questions_from: {str(p)!r} is not a dataset saved with save_to_disk ({exc})."
            ) from exc
        parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    else:
        builder = LOCAL_FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise EvaluationDataError(
                f"exclude_questions_from: unsupported file type {p.suffix!r}; use {sorted(LOCAL_FILE_BUILDERS)}."
            )
        parts = [datasets.load_dataset(builder, data_files=str(p), split="train")]
    questions: set[str] = set()
    for part in parts:
        if "question" in part.column_names:
            texts = part.select_columns(["question"])["question"]
        elif "prompt" in part.column_names:
            texts = [_question_of_prompt(x) for x in part.select_columns(["prompt"])["prompt"]]
        else:
            raise EvaluationDataError(
                f"exclude_questions_from: {str(p)!r} has neither a 'question' nor a 'prompt' column "
                f"(columns: {part.column_names})."
            )
        questions.update(_normalise_question(t) for t in texts if t)
    return questions


def load_eval_questions(config: EvalConfig) -> tuple[list[Any], dict[str, Any]]:
    """Load the evaluation questions, failing with an `EvaluationDataError` that says how to fix the input."""
    from ssb_trl.sources import load_questions

    source = describe_benchmark(config)
    excluded: set[str] = set()
    for path in config.exclude_questions_from:
        excluded |= training_questions(path)
    # With an exclusion list, `limit` applies after the overlap is removed (reasoning-gym sizes are explicit anyway).
    num_questions = None if excluded else config.limit
    try:
        if source["source_type"] == "reasoning_gym":
            examples = load_questions(
                f"reasoning_gym:{source['task']}",
                task_config=source["task_config"],
                seed=source["seed"],
                size=source["size"],
                num_questions=num_questions,
            )
        else:
            if source["source_type"] == "file" and not Path(source["dataset_name"]).expanduser().exists():
                raise FileNotFoundError(f"local evaluation file {source['dataset_name']!r} does not exist")
            examples = load_questions(
                source["dataset_name"],
                source_type=source["source_type"],
                config_name=source["dataset_config"],
                split=source["split"],
                question_field=source["question_field"],
                answer_field=source["answer_field"],
                num_questions=num_questions,
            )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        hint = ""
        if source["source_type"] != "reasoning_gym":
            hint = (
                f" Each evaluation row needs a question in field {source['question_field']!r} and a gold answer in "
                f"field {source['answer_field']!r} (set question_field/answer_field to the right columns)."
            )
        raise EvaluationDataError(
            f"Cannot build the evaluation set for benchmark={config.benchmark!r} ({source['description']}): {exc}.{hint}"
        ) from exc
    if config.exclude_questions_from:
        kept = [ex for ex in examples if _normalise_question(ex.question) not in excluded]
        source["excluded_overlap"] = {
            "from": list(config.exclude_questions_from),
            "count": len(examples) - len(kept),
            "ids": [ex.id for ex in examples if _normalise_question(ex.question) in excluded],
        }
        if not kept:
            raise EvaluationDataError(
                f"Every one of the {len(examples)} evaluation questions also appears in exclude_questions_from "
                f"{config.exclude_questions_from}: evaluate on other questions (another seed or split)."
            )
        if source["excluded_overlap"]["count"]:
            logger.warning(
                "Dropped %d evaluation question(s) that also appear in the training data",
                source["excluded_overlap"]["count"],
            )
        examples = kept[: config.limit] if config.limit else kept
    missing_gold = [ex.id for ex in examples if not str(ex.answer).strip()]
    if missing_gold:
        raise EvaluationDataError(
            f"{len(missing_gold)} of {len(examples)} evaluation questions have no gold answer (e.g. {missing_gold[:3]}); "
            "accuracy cannot be measured without one. Fill the answer field or point answer_field at the right column."
        )
    source["num_questions"] = len(examples)
    return examples, source


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


def score_completion(text: str, num_tokens: int, finished: bool, example: Any) -> dict[str, Any]:
    """Grade one completion and keep what an auditor needs: text, extracted answer, verdict, length, truncation."""
    from ssb_trl.grading import extract_final_answer, grade

    return {
        "text": text,
        "extracted": extract_final_answer(text),
        "correct": bool(grade(text, example)),
        "num_tokens": int(num_tokens),
        "finished": bool(finished),
    }


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


def evaluate_model(model: Any, tokenizer: Any, examples: Sequence[Any], config: EvalConfig) -> dict[str, Any]:
    """Generate and grade completions of one loaded model on `examples`; return its summary and per-question records.

    Sampling seeds derive from (seed, question id), so every model sees the same random stream per question
    (a paired comparison), and a question's samples do not change with `limit` or batch size.
    """
    from ssb_trl.generation import derive_seed, make_backend
    from ssb_trl.prompts import DEFAULT_SYSTEM_PROMPT, student_messages

    system_prompt = DEFAULT_SYSTEM_PROMPT if config.system_prompt is None else (config.system_prompt or None)
    prompts = [student_messages(ex.question, system_prompt=system_prompt) for ex in examples]
    backend = make_backend("transformers", model=model, tokenizer=tokenizer, max_batch_size=config.batch_size)
    timings: dict[str, float] = {}
    greedy_out = sampled_out = None
    if config.greedy:
        start = time.perf_counter()
        greedy_out = backend.generate(prompts, num_samples=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
        timings["greedy_s"] = time.perf_counter() - start
    if config.num_samples > 0:
        start = time.perf_counter()
        sampled_out = backend.generate(
            prompts,
            num_samples=config.num_samples,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=[derive_seed(config.seed, ex.id) for ex in examples],
        )
        timings["sampled_s"] = time.perf_counter() - start
    from tqdm.auto import tqdm

    records = []
    for index, ex in enumerate(tqdm(examples, desc="Grading", unit="question")):
        record: dict[str, Any] = {
            "id": ex.id,
            "question": ex.question,
            "gold": ex.answer,
            "greedy": None,
            "samples": [],
        }
        if greedy_out is not None:
            c = greedy_out[index][0]
            record["greedy"] = score_completion(c.text, len(c.token_ids), c.finished, ex)
        if sampled_out is not None:
            record["samples"] = [
                score_completion(c.text, len(c.token_ids), c.finished, ex) for c in sampled_out[index]
            ]
        records.append(record)
    summary = summarize_records(records, config.num_samples)
    summary["timings"] = timings
    summary["records"] = records
    return summary


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


# --------------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------------


def _fmt_acc(metric: dict[str, Any] | None) -> str:
    if metric is None:
        return "-"
    return f"{100 * metric['accuracy']:.1f}% [{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"


def render_markdown(report: dict[str, Any]) -> str:
    """A results table (one row per model) plus the settings a reader needs to interpret it."""
    cfg = report["config"]
    n = cfg["num_samples"]
    metric_names = (["pass@1"] if cfg["greedy"] else []) + ([f"mean@{n}", f"pass@{n}"] if n > 0 else [])
    headers = ["model", *metric_names]
    if cfg["greedy"]:
        headers += ["greedy tokens (mean)", "greedy truncated"]
    if n > 0:
        headers += ["sampled tokens (mean)"]
    headers.append("questions")
    lines = [
        f"### {report['benchmark']['description']}: {report['benchmark']['num_questions']} questions",
        "",
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |",
    ]
    for result in report["models"]:
        row = [result["label"]]
        row += [_fmt_acc(result["metrics"].get(name)) for name in metric_names]
        if cfg["greedy"]:
            greedy = result["answer_tokens"]["greedy"]
            row += [f"{greedy['mean']:.1f}", f"{100 * greedy['truncated_fraction']:.0f}%"]
        if n > 0:
            row += [f"{result['answer_tokens']['sampled']['mean']:.1f}"]
        row.append(str(result["num_questions"]))
        lines.append("| " + " | ".join(row) + " |")
    notes = ["Accuracies: value [95% Wilson interval] over the listed number of questions."]
    if cfg["greedy"]:
        notes.append("pass@1: one greedy completion per question.")
    if n > 0:
        notes.append(
            f"mean@{n}: mean accuracy of {n} samples per question (temperature {cfg['temperature']}, top_k "
            f"{cfg['top_k']}, top_p {cfg['top_p']}); its interval counts questions, not samples (conservative). "
            f"pass@{n}: a question counts if any sample is correct."
        )
    notes.append(
        f"Answer length: generated tokens incl. end-of-turn, max_new_tokens={cfg['max_new_tokens']} "
        "(truncated = hit that limit)."
    )
    overlap = report["benchmark"].get("excluded_overlap")
    if overlap:
        notes.append(
            f"{overlap['count']} evaluation question(s) also found in the training data "
            f"({', '.join(overlap['from'])}) were dropped before evaluation."
        )
    comparisons = report.get("comparisons") or []
    if comparisons:
        notes.append(
            "Paired pass@1 vs "
            + comparisons[0]["baseline"]
            + ": "
            + "; ".join(
                f"{c['model']} {100 * c['difference']:+.1f} pts ({c['only_model_correct']} questions won, "
                f"{c['only_baseline_correct']} lost, exact McNemar p={c['mcnemar_exact_p']:.3g})"
                for c in comparisons
            )
            + "."
        )
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def accuracy_bars(report: dict[str, Any]) -> list[Any]:
    """Bars for the accuracy chart: one group per model, one bar per metric."""
    from ssb_trl.plotting import AccuracyBar

    return [
        AccuracyBar(result["label"], name, m["accuracy"], m["ci_low"], m["ci_high"], m["n"])
        for result in report["models"]
        for name, m in result["metrics"].items()
    ]


def write_report(report: dict[str, Any], output_dir: str | os.PathLike[str], plot: bool = True) -> dict[str, Path]:
    """Write results.json (everything, per-question records included), results.md, and accuracy.png."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    tmp = paths["json"].with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    os.replace(tmp, paths["json"])
    if report["models"]:
        paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
        if plot:
            from ssb_trl.plotting import plot_accuracy_bars

            paths["plot"] = plot_accuracy_bars(
                accuracy_bars(report),
                out / "accuracy.png",
                title=f"{report['benchmark']['description']}: {report['benchmark']['num_questions']} questions",
            )
    return paths


def _environment() -> dict[str, str]:
    import torch
    import transformers

    import ssb_trl

    return {
        "ssb_trl": ssb_trl.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every model in `config.models` and write the reports; return the full report dict.

    Everything that can be checked cheaply (model entries, the evaluation set, its gold answers, model configs)
    is checked before the first model is loaded. Results are rewritten after each model, so a crash keeps the
    models already done.
    """
    from ssb_trl.prompts import PROMPT_TEMPLATE_VERSION

    specs = parse_model_specs(config.models, config.adapter_base_model)
    examples, source = load_eval_questions(config)
    check_models_loadable(specs)
    report: dict[str, Any] = {
        "config": asdict(config),
        "benchmark": source,
        "prompt_template_version": PROMPT_TEMPLATE_VERSION,
        "environment": _environment(),
        "models": [],
        "comparisons": [],
    }
    logger.info("Evaluating %d model(s) on %d questions: %s", len(specs), len(examples), source["description"])
    device = None if config.device == "auto" else config.device
    for spec in specs:
        started = time.perf_counter()
        model, tokenizer = load_eval_model(spec, dtype=config.dtype, device=device)
        result = evaluate_model(model, tokenizer, examples, config)
        del model
        gc.collect()
        result = {
            "label": spec.label,
            "model": spec.name_or_path,
            "adapter_base": spec.adapter_base,
            **result,
            "seconds": time.perf_counter() - started,
        }
        report["models"].append(result)
        if config.greedy and len(report["models"]) > 1:
            report["comparisons"] = [paired_pass1_comparison(report["models"][0], m) for m in report["models"][1:]]
        summary = ", ".join(f"{k} {Accuracy(**m).fmt()}" for k, m in result["metrics"].items())
        logger.info("%s: %s", spec.label, summary)
        write_report(report, config.output_dir, plot=False)
    write_report(report, config.output_dir, plot=config.plot)
    return report
