"""Offline distillation data from any teacher: label a prompt/completion dataset with a teacher's soft labels.

TRL's distillation trainers (GKD, and SFT with a live teacher) keep the teacher in memory next to the student at
every step. ``ssb-trl label`` runs the teacher once, teacher-forced over each completion, and stores its top-K
log-probs in the soft-label contract (:mod:`ssb_trl.contract`); ``ssb-trl train`` (``SSBTrainer``) then trains any
student that shares the teacher's tokenizer from those labels, with no teacher loaded.

The input is TRL's prompt-completion format, conversational (``prompt``: a list of messages, ``completion``: one
assistant message) or plain strings (wrapped as one user and one assistant message, since soft labels are taken
under a chat template); without a ``completion`` column the teacher writes the completions through the
generation engines of data preparation (:func:`ssb_trl.data.engine.make_backend`). The teacher may see another
prompt than the student (a ``teacher_prompt`` column, or ``--teacher_system_prompt``); the soft labels are
always on the completion tokens, and each row's ``input_ids`` are the *student's* prompt plus the completion.

Like preparation, the run is cut into shards of ``shard_size`` rows kept under ``<output_dir>/ssb_work/``
(:class:`~ssb_trl.data.workdir.WorkDir`: atomic writes, the lock, the publish step): a rerun skips finished shards,
shards are dealt round-robin to the processes of ``accelerate launch``, and a changed setting either redoes the
soft labels (cheap: the soft-label settings, the student) or is refused when it would throw away completions
the teacher generated. Rows edited in the input redo only their shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ssb_trl.compact_labels import LOGPROB_CODE_DTYPE, compact_soft_label_rows
from ssb_trl.contract import (
    ANSWER,
    COMPLETION,
    COMPLETION_MASK,
    ID,
    INPUT_IDS,
    LOGPROB_DTYPES,
    PROMPT,
    SOFT_LABEL_MODES,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    SoftLabelMetadata,
    features,
    push_soft_label_dataset_to_hub,
    save_soft_label_dataset,
    tokenizer_fingerprint,
)
from ssb_trl.data.engine import EngineConfig, make_backend
from ssb_trl.data.prompts import Messages, chat_prompt_ids, completion_text_ids
from ssb_trl.data.sampling import Sampling, derive_seed
from ssb_trl.data.teacher import extract_soft_labels
from ssb_trl.data.workdir import WorkDir, read_jsonl, write_jsonl
from ssb_trl.models import (
    check_model_available,
    end_of_turn_token,
    load_model_and_tokenizer,
    load_tokenizer,
    model_fingerprint,
    module_fingerprint,
    resolve_model_path,
)
from ssb_trl.storage import check_writable_dir, load_rows, write_json, write_text
from ssb_trl.validation import require_valid_numbers

logger = logging.getLogger(__name__)

LABEL_PROMPT_VERSION = "dataset-prompts"
"""Recorded as the metadata's prompt_template_version: the prompts are the dataset's own, not ssb-trl's."""
SUMMARY_FILENAME = "label_summary.json"
TEACHER_PROMPT = "teacher_prompt"
FORMATS_ACCEPTED = (
    "TRL's prompt-completion format: a 'prompt' column (a list of chat messages {'role', 'content'}, or a string) "
    "and a 'completion' column (a list with one assistant message, or a string); without 'completion', the teacher "
    "writes the completions. An optional 'teacher_prompt' column (same form as 'prompt') is what the teacher sees "
    "instead of the student's prompt; optional 'id' and 'answer' columns are kept"
)

# Settings that change how fast a run goes, not what it writes: a resumed run may change them.
RUNTIME_ONLY_FIELDS = frozenset(
    {
        "output_dir",
        "device",
        "soft_label_batch_size",
        "generation_batch_size",
        "generation_max_batch_tokens",
        *(f.name for f in fields(EngineConfig)),
        "push_to_hub",
        "hub_dataset_id",
        "hub_private",
    }
)
# What the input rows are is compared by content, shard by shard, not by these names.
INPUT_FIELDS = frozenset({"dataset_name", "dataset_config", "dataset_split", "num_rows"})
MODEL_FIELDS = frozenset({"teacher_model_name_or_path", "student_model_name_or_path"})
TEACHER_IDENTITY = "teacher model (weights, config and tokenizer, by content)"
STUDENT_IDENTITY = "student tokenizer (vocabulary and chat template)"
# Settings the teacher's generated completions depend on; every other output-determining setting feeds only the
# soft labels (K, T, dtype, max_length, the student's tokenizer), which are cheap to redo.
COMPLETION_FIELDS = frozenset(
    {
        TEACHER_IDENTITY,
        "teacher_system_prompt",
        "generation_temperature",
        "generation_top_k",
        "generation_top_p",
        "max_new_tokens",
        "seed",
        "dtype",
        "shard_size",
    }
)


@dataclass
class LabelConfig(EngineConfig):
    """Every setting of ``ssb-trl label``: the input dataset, the teacher (and optionally the student it is for),
    how missing completions are generated, the soft labels, and the run's folder."""

    # Input
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Prompt/completion dataset: a .jsonl/.json/.parquet/.csv file, a folder of them, a folder written "
            "by save_to_disk, or a Hub dataset id. Columns: 'prompt' (messages or a string), 'completion' (one "
            "assistant message or a string; absent: the teacher writes it), optional 'teacher_prompt', 'id'."
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
            "vocabulary; checked before any work) and its chat template renders the student's prompt. Default: the "
            "teacher's tokenizer."
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
    generation_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of generated completions (0: greedy)."}
    )
    generation_top_k: int = field(default=0, metadata={"help": "Top-k of generated completions (0: off)."})
    generation_top_p: float = field(default=1.0, metadata={"help": "Top-p of generated completions."})
    max_new_tokens: int = field(
        default=1024,
        metadata={"help": "Longest generated completion; completions cut at this length are dropped (with a count)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of sampled completions (each row seeded by its id)."})
    # Soft labels
    soft_label_mode: str = field(
        default="topk",
        metadata={
            "help": "topk: the teacher's K most probable tokens per completion token (a biased target: the tail's "
            "shape is lost). sampled: N draws from the teacher's distribution at soft_label_temperature, stored as "
            "the distinct drawn ids with log(count / N) (Sparse Logit Sampling, arXiv 2503.16870): unbiased, "
            "noisier per step (format version 3). Changing it redoes only the soft labels."
        },
    )
    soft_label_top_k: int = field(
        default=64, metadata={"help": "Teacher log-probs stored per completion token (K) in topk mode."}
    )
    soft_label_draws: int = field(
        default=32,
        metadata={"help": "Draws per completion token (N) in sampled mode, stored as N entries; seeded per row."},
    )
    soft_label_temperature: float = field(
        default=2.0, metadata={"help": "Temperature of the stored log-probs (training's SSBConfig.temperature)."}
    )
    logprob_dtype: str = field(
        default="float16",
        metadata={
            "help": "Stored log-prob dtype: float16, float32, or uint8 = compact soft labels (format version 2: "
            "8-bit codes and uint16 ids for vocabularies <= 65,536; 3 bytes per top-K entry instead of 6)."
        },
    )
    max_length: int | None = field(
        default=2048,
        metadata={
            "help": "Longest student row (prompt + completion tokens). Longer rows of the dataset are refused, "
            "naming them (cutting a completion would cut its end of turn); generated ones are dropped with a count. "
            "None: no limit but the teacher's context window."
        },
    )
    soft_label_batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced pass."})
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
    # Output
    output_dir: str = field(default="labelled_data", metadata={"help": "Where the dataset and the work files go."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub (untested offline)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub dataset as private."})

    def __post_init__(self) -> None:
        require_valid_numbers(self)
        checks = [
            (bool(self.dataset_name), "no input: set --dataset_name (a prompt/completion file, folder or Hub id)"),
            (bool(self.teacher_model_name_or_path), "no teacher: set --teacher_model_name_or_path"),
            (self.num_rows is None or self.num_rows >= 1, "num_rows must be >= 1 (or unset for all rows)"),
            (self.soft_label_top_k >= 1, "soft_label_top_k must be >= 1"),
            (self.soft_label_mode in SOFT_LABEL_MODES, f"soft_label_mode must be one of {SOFT_LABEL_MODES}"),
            (self.soft_label_draws >= 1, "soft_label_draws must be >= 1 (N draws per completion token)"),
            (self.soft_label_temperature > 0, "soft_label_temperature must be > 0"),
            (self.logprob_dtype in LOGPROB_DTYPES, "logprob_dtype must be float16, float32 or uint8 (compact)"),
            (self.max_length is None or self.max_length >= 2, "max_length must be >= 2 (or None for no limit)"),
            (self.soft_label_batch_size >= 1, "soft_label_batch_size must be >= 1"),
            (self.shard_size >= 1, "shard_size must be >= 1"),
            (not self.push_to_hub or bool(self.hub_dataset_id), "--push_to_hub needs --hub_dataset_id"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.check_engine()
        self.generation_sampling  # noqa: B018 - validates the sampling settings early

    @property
    def generation_sampling(self) -> Sampling:
        """How the teacher writes missing completions: one per prompt."""
        return Sampling(
            self.generation_temperature, self.generation_top_k, self.generation_top_p, self.max_new_tokens, 1
        )

    @property
    def soft_label_entries(self) -> int:
        """Entries stored per completion token: K in topk mode, N in sampled mode."""
        return self.soft_label_draws if self.soft_label_mode == "sampled" else self.soft_label_top_k

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the output (everything except runtime-only knobs); the unused one of K and N
        is left out, so changing it redoes nothing."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_ONLY_FIELDS}
        del settings["soft_label_top_k" if self.soft_label_mode == "sampled" else "soft_label_draws"]
        return settings


@dataclass
class LabelExample:
    """One input row, checked: the student's and the teacher's prompts and the completion (None: to generate)."""

    id: str
    prompt: Messages
    teacher_prompt: Messages
    completion: str | None
    answer: str = ""


@dataclass
class LabelSummary:
    """What a labelling run wrote (``label_summary.json``)."""

    output_dir: str
    rows_in: int
    rows_written: int
    answer_tokens: int
    completions_generated: int
    dropped_unfinished: int
    dropped_too_long: int
    shards_done: list[int]
    shards_reused: list[int]
    bytes_per_answer_token: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Reading and checking the input


def _messages(value: Any, column: str, row_id: str) -> Messages:
    """A prompt as chat messages: a list of {'role', 'content'} as given, a string as one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"row {row_id!r}: {column!r} is an empty string; give every row a prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        messages = []
        for message in value:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise ValueError(
                    f"row {row_id!r}: {column!r} holds {message!r}, not a chat message with a string 'role' and "
                    f"'content'. Accepted: {FORMATS_ACCEPTED}."
                )
            messages.append({"role": message["role"], "content": message["content"]})
        return messages
    raise ValueError(
        f"row {row_id!r}: {column!r} is {value!r}; it must be a non-empty list of chat messages or a string. "
        f"Accepted: {FORMATS_ACCEPTED}."
    )


def _completion_text(value: Any, row_id: str) -> str | None:
    """A completion's text (one assistant message, or a string); None for an empty one (refused by the caller)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = value[0]
        if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
            raise ValueError(
                f"row {row_id!r}: 'completion' is {message!r}; it must be one message with role 'assistant' and a "
                "string 'content' (the answer the soft labels are taken on)"
            )
        value = message["content"]
    elif isinstance(value, list):
        raise ValueError(
            f"row {row_id!r}: 'completion' holds {len(value)} messages; ssb-trl label takes one assistant message per "
            "row (soft labels are taken on one answer). Put earlier turns in 'prompt'."
        )
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"row {row_id!r}: 'completion' is {value!r}; give one assistant message or a string")
    return value


def _with_system_prompt(messages: Messages, system_prompt: str | None) -> Messages:
    """The teacher's copy of a prompt: ``system_prompt`` replaces the prompt's system message (or is put first)."""
    if system_prompt is None:
        return messages
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return [{"role": "system", "content": system_prompt}, *rest] if system_prompt else list(rest)


def read_examples(dataset: datasets.Dataset, config: LabelConfig) -> list[LabelExample]:
    """The input rows as :class:`LabelExample`, or a ``ValueError`` naming the column, row and accepted formats."""
    columns = list(dataset.column_names)
    if PROMPT not in columns:
        hint = (
            " It has a 'messages' column (TRL's conversational language-modeling format): split each conversation "
            "into 'prompt' (the turns before the last assistant message) and 'completion' (that message)."
            if "messages" in columns
            else ""
        )
        raise ValueError(
            f"dataset {config.dataset_name!r} has no 'prompt' column; its columns are {columns}. ssb-trl label reads "
            f"{FORMATS_ACCEPTED}.{hint}"
        )
    if len(dataset) == 0:
        raise ValueError(f"dataset {config.dataset_name!r} (split {config.dataset_split!r}) has no rows")
    has_completion, has_teacher_prompt = COMPLETION in columns, TEACHER_PROMPT in columns
    if has_teacher_prompt and config.teacher_system_prompt is not None:
        raise ValueError(
            "both a 'teacher_prompt' column and --teacher_system_prompt are given; the teacher's prompt would be "
            "ambiguous. Put the system message into 'teacher_prompt', or drop the column"
        )
    examples, empty = [], []
    for index, row in enumerate(dataset):
        row_id = str(row[ID]) if ID in columns and row[ID] is not None else f"{config.dataset_split}/{index}"
        prompt = _messages(row[PROMPT], PROMPT, row_id)
        teacher_value = row[TEACHER_PROMPT] if has_teacher_prompt else None
        teacher_prompt = (
            _messages(teacher_value, TEACHER_PROMPT, row_id)
            if teacher_value is not None
            else _with_system_prompt(prompt, config.teacher_system_prompt)
        )
        completion = _completion_text(row[COMPLETION], row_id) if has_completion else None
        if has_completion and completion is None:
            empty.append(row_id)
        answer = row.get(ANSWER)
        examples.append(
            LabelExample(row_id, prompt, teacher_prompt, completion, answer if isinstance(answer, str) else "")
        )
    if empty:
        raise ValueError(
            f"{len(empty)} row(s) of {config.dataset_name!r} have an empty completion (first: {empty[:5]}): there is "
            "no answer token to take soft labels on. Drop those rows, or drop the 'completion' column to have the "
            "teacher write every completion."
        )
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(
            f"the 'id' column of {config.dataset_name!r} repeats ids (e.g. {repeated}); ids must be unique"
        )
    return examples


def load_examples(config: LabelConfig) -> list[LabelExample]:
    """Load and check the input rows (``num_rows`` first ones)."""
    dataset = load_rows(config.dataset_name, split=config.dataset_split, config_name=config.dataset_config)
    if config.num_rows is not None:
        dataset = dataset.select(range(min(config.num_rows, len(dataset))))
    return read_examples(dataset, config)


# --------------------------------------------------------------------------------------------------
# Tokens


@dataclass
class _Tokens:
    """One row in tokens: the student's prompt, the teacher's prompt, the completion (None: still to generate)."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    completion: list[int] | None


def end_of_turn_id(tokenizer: Any) -> int:
    """The token a completion ends with: the chat template's end of turn, else the eos token."""
    token = end_of_turn_token(tokenizer)
    return token if token is not None else int(tokenizer.eos_token_id)


def completion_ids(tokenizer: Any, text: str, end_of_turn: int) -> list[int]:
    """A completion's tokens, ending with the end-of-turn token (the student learns to stop); special tokens
    written in the text stay text, as in the prompts (:func:`ssb_trl.data.prompts.completion_text_ids`)."""
    return completion_text_ids(tokenizer, text, end_of_turn)


def tokenize_examples(
    examples: list[LabelExample],
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    config: LabelConfig,
    context_window: int | None,
) -> list[_Tokens]:
    """Every row in tokens; rows too long for ``max_length`` or the teacher's context are refused, named."""
    end_of_turn = end_of_turn_id(teacher_tokenizer)
    tokens, too_long, over_context = [], [], []
    for example in examples:
        try:
            student = chat_prompt_ids(student_tokenizer, example.prompt)
            teacher = (
                student
                if example.teacher_prompt == example.prompt and student_tokenizer is teacher_tokenizer
                else chat_prompt_ids(teacher_tokenizer, example.teacher_prompt)
            )
        except Exception as exc:  # a chat template that rejects the conversation (roles, order)
            raise ValueError(
                f"row {example.id!r}: the chat template cannot render its prompt ({type(exc).__name__}: {exc}); "
                "check the roles and order of its messages"
            ) from exc
        answer = (
            None if example.completion is None else completion_ids(teacher_tokenizer, example.completion, end_of_turn)
        )
        length = len(student) + (len(answer) if answer is not None else 1)
        if config.max_length is not None and length > config.max_length:
            too_long.append(f"{example.id} ({length} tokens)")
        teacher_length = len(teacher) + (len(answer) if answer is not None else config.max_new_tokens)
        if context_window is not None and teacher_length > context_window:
            over_context.append(f"{example.id} ({teacher_length} tokens)")
        tokens.append(_Tokens(student, teacher, answer))
    if too_long:
        raise ValueError(
            f"{len(too_long)} row(s) are longer than max_length={config.max_length} student tokens (prompt + "
            f"completion; first: {too_long[:5]}). Cutting a completion would cut its end of turn and teach the "
            "student not to stop, so they are refused: raise --max_length, or drop those rows from the input."
        )
    if over_context:
        raise ValueError(
            f"{len(over_context)} row(s) do not fit the teacher's context window of {context_window} positions "
            f"(teacher prompt + completion, or + max_new_tokens when the teacher writes it; first: "
            f"{over_context[:5]}). Drop those rows, or lower --max_new_tokens."
        )
    return tokens


# --------------------------------------------------------------------------------------------------
# The teacher


def _teacher_identity(config: LabelConfig, model: Any, tokenizer: Any) -> dict[str, Any]:
    """The teacher by content, so a rerun on replaced weights is not mixed with the old run's shards."""
    try:
        identity = (
            module_fingerprint(model) if model is not None else model_fingerprint(config.teacher_model_name_or_path)
        )
    except Exception as exc:  # e.g. a Hub model outside the cache layout: fall back to its name
        logger.warning("Cannot fingerprint %s (%s); runs compare it by name", config.teacher_model_name_or_path, exc)
        identity = {
            "kind": "name",
            "path": config.teacher_model_name_or_path,
            "sha256": config.teacher_model_name_or_path,
        }
    return {**identity, "tokenizer": _tokenizer_digest(tokenizer)}


def _tokenizer_digest(tokenizer: Any) -> str:
    record = {"vocabulary": tokenizer_fingerprint(tokenizer), "chat_template": tokenizer.chat_template}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_student_tokenizer(teacher_tokenizer: Any, student_tokenizer: Any, teacher: str, student: str) -> None:
    """Refuse a student whose tokenizer is not the teacher's: the stored ids would mean other tokens to it."""
    teacher_print, student_print = tokenizer_fingerprint(teacher_tokenizer), tokenizer_fingerprint(student_tokenizer)
    if teacher_print != student_print:
        raise ValueError(
            f"the student {student!r} has another tokenizer than the teacher {teacher!r} (student: {student_print}, "
            f"teacher: {teacher_print}): soft labels are teacher token ids, which would be other tokens (or none) "
            "for this student, and `ssb-trl train` would refuse the dataset. Pick a teacher and a student of one "
            "model family with the same vocabulary (e.g. Qwen2.5-7B-Instruct -> Qwen2.5-0.5B-Instruct)."
        )


def teacher_soft_labels(
    model: Any, sequences: list[list[int]], starts: list[int], row_ids: list[str], config: LabelConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The teacher's soft labels on each completion, in the stored dtype; non-finite ones refused, naming the row.

    The one call of the extraction: taken in float32 so every row is checked before it is rounded or encoded.
    Sampled draws are seeded per row id, so a rerun or another process draws the same tokens.
    """
    sampled = config.soft_label_mode == "sampled"
    labels = extract_soft_labels(
        model,
        sequences,
        starts,
        mode=config.soft_label_mode,
        top_k=config.soft_label_top_k,
        num_draws=config.soft_label_draws if sampled else None,
        seeds=[derive_seed(config.seed, row_id, "soft_labels") for row_id in row_ids] if sampled else None,
        temperature=config.soft_label_temperature,
        batch_size=config.soft_label_batch_size,
        logprob_dtype="float32",
        show_progress=False,
    )
    vocab_size = model.get_output_embeddings().weight.shape[0]
    stored = []
    for row_id, (ids, logprobs) in zip(row_ids, labels):
        finite = np.isfinite(logprobs).all(-1)
        if not finite.all():
            raise ValueError(
                f"row {row_id!r}: the teacher's log-probs are NaN or infinite on {int((~finite).sum())} of its "
                f"{len(finite)} completion tokens (first: token {int(np.argmin(finite))}); its logits overflowed. "
                f"Run the teacher in float32 (--dtype float32) or check its weights ({config.teacher_model_name_or_path!r})."
            )
        if config.logprob_dtype == LOGPROB_CODE_DTYPE:
            stored.append(compact_soft_label_rows(ids, logprobs, vocab_size, round_up=sampled))
        else:
            stored.append((ids.astype(np.int32), logprobs.astype(config.logprob_dtype)))
    return stored


def build_rows(
    model: Any,
    examples: list[LabelExample],
    tokens: list[_Tokens],
    texts: list[str],
    config: LabelConfig,
) -> datasets.Dataset:
    """Soft labels on [teacher prompt + completion]; rows on [student prompt + completion], in the contract."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    row_features = features(config.logprob_dtype, vocab_size=vocab_size, top_k=config.soft_label_entries)
    columns: dict[str, list[Any]] = {name: [] for name in row_features}
    if not examples:
        return datasets.Dataset.from_dict(columns, features=row_features)
    sequences = [t.teacher_prompt + t.completion for t in tokens]
    starts = [len(t.teacher_prompt) for t in tokens]
    labels = teacher_soft_labels(model, sequences, starts, [e.id for e in examples], config)
    for example, token, text, (top_ids, top_logprobs) in zip(examples, tokens, texts, labels):
        columns[ID].append(example.id)
        columns[ANSWER].append(example.answer)
        columns[PROMPT].append(example.prompt)
        columns[COMPLETION].append([{"role": "assistant", "content": text}])
        columns[INPUT_IDS].append(token.student_prompt + token.completion)
        columns[COMPLETION_MASK].append([0] * len(token.student_prompt) + [1] * len(token.completion))
        columns[TEACHER_TOPK_IDS].append(top_ids.tolist())
        columns[TEACHER_TOPK_LOGPROBS].append(top_logprobs.tolist())
    return datasets.Dataset.from_dict(columns, features=row_features)


# --------------------------------------------------------------------------------------------------
# The run's folder


def shard_digests(examples: list[LabelExample], shard_size: int) -> list[str]:
    """One digest per shard of what its rows are, so an edited input redoes only the shards it touched."""
    digests = []
    for start in range(0, len(examples), shard_size):
        digest = hashlib.sha256()
        for example in examples[start : start + shard_size]:
            digest.update(json.dumps(asdict(example), sort_keys=True).encode())
        digests.append(digest.hexdigest())
    return digests


def _describe(changed: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())


def claim(work: WorkDir, settings: dict[str, Any]) -> list[str]:
    """Record a new run's settings, or reconcile them with the run in this folder; returns what was redone.

    Soft-label settings (and the student) may change: the soft-label rows are redone, generated completions kept.
    A change of what generated completions depend on (teacher, generation settings) is refused while the folder
    holds some. Shards whose input rows changed are redone whole.
    """
    recorded = work.read_settings()
    if recorded is None:
        work.check_usable()
        write_json(work.settings_path, settings)
        return []
    if recorded.get("kind") != settings["kind"]:
        raise ValueError(
            f"output_dir {str(work.output_dir)!r} holds an `ssb-trl prepare` run, not an `ssb-trl label` run; choose "
            "another --output_dir"
        )
    if recorded == settings:
        return []
    old, new = recorded["config"], settings["config"]
    changed = {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if key not in INPUT_FIELDS and key not in MODEL_FIELDS and old.get(key) != new.get(key)
    }
    if recorded["teacher"].get("sha256") != settings["teacher"].get("sha256") or (
        recorded["teacher"].get("tokenizer") != settings["teacher"].get("tokenizer")
    ):
        changed[TEACHER_IDENTITY] = (recorded["teacher"].get("path"), settings["teacher"].get("path"))
    if recorded.get("student_tokenizer") != settings.get("student_tokenizer"):
        changed[STUDENT_IDENTITY] = (old.get("student_model_name_or_path"), new.get("student_model_name_or_path"))
    generated = work.finished_shards("completions")
    for_completions = {key: value for key, value in changed.items() if key in COMPLETION_FIELDS}
    if for_completions and generated:
        raise ValueError(
            f"output_dir {str(work.output_dir)!r} holds {len(generated)} shard(s) of completions the teacher "
            f"generated with other settings ({_describe(for_completions)}); they would be thrown away. Rerun with the "
            "recorded settings to resume (they are in "
            f"{str(work.settings_path)!r}), or choose another --output_dir (or delete that one) to start afresh. "
            "Soft-label settings (soft_label_mode, soft_label_top_k or soft_label_draws, soft_label_temperature, "
            "logprob_dtype, max_length, --student_model_name_or_path) may change between runs: only the soft labels are redone."
        )
    notes = []
    finished = work.finished_shards("rows")
    if changed and finished:
        kept = f"; keeping the generated completions of {len(generated)} shard(s)" if generated else ""
        notes.append(
            f"settings changed ({_describe(changed)}): redoing the soft labels of {len(finished)} shard(s){kept}"
        )
        for shard in finished:
            work.remove("rows", shard)
    old_digests, new_digests = recorded["input"]["shard_sha256"], settings["input"]["shard_sha256"]
    differing = [i for i in range(min(len(old_digests), len(new_digests))) if old_digests[i] != new_digests[i]]
    stale = [i for i in differing if i in set(generated) | set(work.finished_shards("rows"))]
    for shard in stale:
        work.remove("completions", shard)
        work.remove("rows", shard)
    if stale:
        notes.append(
            f"the input rows of shard(s) {stale} differ from the recorded run's (the dataset was edited, or num_rows "
            "changed): redoing those shards; keeping the other finished shards"
        )
    if len(old_digests) > len(new_digests):  # keep them, so a later run that grows again can trust those files
        settings = {
            **settings,
            "input": {**settings["input"], "shard_sha256": new_digests + old_digests[len(new_digests) :]},
        }
    write_json(work.settings_path, settings)
    return notes


def _check_completion_shards(work: WorkDir, examples: list[LabelExample], shard_size: int) -> None:
    """Before any work: every finished completions file is whole (a damaged one is named, with the fix)."""
    for shard in work.finished_shards("completions"):
        ids = [e.id for e in examples[shard * shard_size : (shard + 1) * shard_size]]
        if ids:
            read_jsonl(work.shard_path("completions", shard), ids)


# --------------------------------------------------------------------------------------------------
# Orchestration


def _generate(backend: Any, examples: list[LabelExample], config: LabelConfig) -> list[dict]:
    """The teacher's completions of one shard's prompts (seeded per row id), as JSON-able records."""
    seeds = [derive_seed(config.seed, example.id, "label") for example in examples]
    outputs = backend.generate([e.teacher_prompt for e in examples], config.generation_sampling, seed=seeds)
    return [
        {"id": e.id, "text": samples[0].text, "token_ids": samples[0].token_ids, "finished": samples[0].finished,
         "generated_by": backend.name}
        for e, samples in zip(examples, outputs)
    ]  # fmt: skip


def _process_shard(
    shard: int,
    examples: list[LabelExample],
    tokens: list[_Tokens],
    work: WorkDir,
    model: Any,
    backend: Any,
    end_of_turn: int,
    eos_ids: list[int],
    config: LabelConfig,
) -> None:
    texts = [e.completion for e in examples]
    if any(t.completion is None for t in tokens):
        records = work.read_shard("completions", shard, [e.id for e in examples])
        if records is None:
            records = _generate(backend, examples, config)
            write_jsonl(work.shard_path("completions", shard), records)
        kept_examples, kept_tokens, texts = [], [], []
        for example, token, record in zip(examples, tokens, records):
            ids = list(record["token_ids"])
            if not record["finished"] or not record["text"].strip():
                continue  # cut at max_new_tokens (it would teach not to stop) or empty: counted in the summary
            if ids[-1] not in eos_ids:
                ids.append(end_of_turn)
            if config.max_length is not None and len(token.student_prompt) + len(ids) > config.max_length:
                continue
            kept_examples.append(example)
            kept_tokens.append(_Tokens(token.student_prompt, token.teacher_prompt, ids))
            texts.append(record["text"])
        examples, tokens = kept_examples, kept_tokens
    work.save_rows(shard, build_rows(model, examples, tokens, texts, config))
    logger.info("Shard %d: %d rows labelled", shard, len(examples))


def _preflight(config: LabelConfig, model: Any, tokenizer: Any) -> tuple[Any, Any, int | None]:
    """Check the models before any work: the teacher loads, K fits its vocabulary, the student shares its tokenizer.

    Returns (teacher tokenizer, student tokenizer, the teacher's context window)."""
    from transformers import AutoConfig

    name = config.teacher_model_name_or_path
    if model is not None:
        model_config = model.config
    else:
        try:
            check_model_available(name)
            model_config = AutoConfig.from_pretrained(resolve_model_path(name))
        except Exception as exc:
            raise ValueError(
                f"cannot load the teacher {name!r} ({type(exc).__name__}: {exc}). Nothing was written; pass a local "
                "model folder, 'bundled:smollm2-135m-instruct', or a Hub id (in the local cache when offline) as "
                "--teacher_model_name_or_path"
            ) from exc
    if tokenizer is None:
        tokenizer = load_tokenizer(name)
    student_tokenizer = tokenizer
    if config.student_model_name_or_path:
        try:
            student_tokenizer = load_tokenizer(config.student_model_name_or_path)
        except Exception as exc:
            raise ValueError(
                f"cannot load the tokenizer of the student {config.student_model_name_or_path!r} "
                f"({type(exc).__name__}: {exc}); fix --student_model_name_or_path"
            ) from exc
        check_student_tokenizer(tokenizer, student_tokenizer, name, config.student_model_name_or_path)
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    vocab_size = getattr(text_config, "vocab_size", None) or len(tokenizer)
    if config.soft_label_entries > vocab_size:
        flag = "soft_label_draws" if config.soft_label_mode == "sampled" else "soft_label_top_k"
        raise ValueError(
            f"{flag}={config.soft_label_entries} is larger than the teacher's vocabulary ({vocab_size} "
            f"tokens); pass a smaller --{flag}"
        )
    context = getattr(text_config, "max_position_embeddings", None)
    return tokenizer, student_tokenizer, context if isinstance(context, int) else None


def label_dataset(
    config: LabelConfig,
    model: Any = None,
    tokenizer: Any = None,
    examples: list[LabelExample] | None = None,
    show_progress: bool = True,
    backend: Any = None,
) -> LabelSummary:
    """Run (or resume) labelling; returns the summary (on every process).

    ``model``/``tokenizer`` (the teacher) and ``examples`` may be passed in; otherwise they come from ``config``.
    Under ``accelerate launch`` the shards are dealt round-robin to the processes and the main process writes the
    dataset, as in :func:`ssb_trl.data.prepare_ssb_data`.
    """
    from ssb_trl.data.pipeline import _distributed_state  # preparation's: one accelerate state per launch

    state = _distributed_state(config)
    tokenizer, student_tokenizer, context = _preflight(config, model, tokenizer)
    if examples is None:
        examples = load_examples(config)
    tokens = tokenize_examples(examples, tokenizer, student_tokenizer, config, context)
    generating = any(token.completion is None for token in tokens)
    if generating and config.resolve_backend()[0] == "vllm" and state.num_processes > 1:
        raise ValueError(
            f"a local vLLM engine per process ({state.num_processes} processes) is not supported: for many GPUs "
            "start one server (`vllm serve TEACHER --data-parallel-size N`) and pass --vllm_server_url"
        )
    if generating:
        config.check_backend_available()
    check_writable_dir(config.output_dir, "output_dir")
    work = WorkDir(config.output_dir)
    settings = {
        "kind": "ssb-trl label",
        "config": config.fingerprint(),
        "teacher": _teacher_identity(config, model, tokenizer),
        "student_tokenizer": _tokenizer_digest(student_tokenizer),
        "input": {"count": len(examples), "shard_sha256": shard_digests(examples, config.shard_size)},
    }
    if not state.is_main_process:
        return _label(config, state, work, settings, model, tokenizer, examples, tokens, show_progress, backend)
    work.check_usable()
    work.acquire_lock()
    try:
        return _label(config, state, work, settings, model, tokenizer, examples, tokens, show_progress, backend)
    finally:
        work.release_lock()


def _label(
    config: LabelConfig,
    state: Any,
    work: WorkDir,
    settings: dict[str, Any],
    model: Any,
    tokenizer: Any,
    examples: list[LabelExample],
    tokens: list[_Tokens],
    show_progress: bool,
    backend: Any,
) -> LabelSummary:
    size = config.shard_size
    num_shards = (len(examples) + size - 1) // size
    if state.is_main_process:
        resuming = work.read_settings() is not None
        notes = claim(work, settings)
        work.check_shards([[e.id for e in examples[s * size : (s + 1) * size]] for s in range(num_shards)])
        _check_completion_shards(work, examples, size)
        work.done_path.unlink(missing_ok=True)
        (work.output_dir / SUMMARY_FILENAME).unlink(missing_ok=True)
        logger.info(
            "%s labelling %d rows in %s", "Resuming" if resuming else "Starting", len(examples), work.output_dir
        )
        for note in notes:
            logger.warning("%s: %s", config.output_dir, note)
    state.wait_for_everyone()
    if not state.is_main_process and (work.read_settings() or {}).get("config") != settings["config"]:
        raise RuntimeError(
            f"this process's settings differ from those the main process recorded in {work.settings_path}; launch "
            "every process with the same settings"
        )
    reused = [s for s in range(num_shards) if work.shard_path("rows", s).is_dir()]
    todo = [s for s in range(num_shards) if s % state.num_processes == state.process_index and s not in reused]
    if todo and model is None:
        device = config.device or (str(state.device) if state.num_processes > 1 else None)
        model, tokenizer = load_model_and_tokenizer(
            config.teacher_model_name_or_path, dtype=config.dtype, device=device
        )
    own_backend = False
    if todo:
        needs_generation = any(
            tokens[i].completion is None for s in todo for i in range(s * size, min((s + 1) * size, len(examples)))
        )
        if needs_generation and backend is None:
            own_backend = True
            backend = make_backend(
                config,
                model=model,
                tokenizer=tokenizer,
                model_name_or_path=config.teacher_model_name_or_path,
                dtype=config.dtype,
                max_batch_size=config.generation_batch_size,
                max_batch_tokens=config.generation_max_batch_tokens,
                show_progress=show_progress and state.is_local_main_process,
            )
        logger.info(
            "Process %d/%d: %d of %d shards to do (%d rows in all)",
            state.process_index, state.num_processes, len(todo), num_shards, len(examples),
        )  # fmt: skip
        end_of_turn = end_of_turn_id(tokenizer)
        eos_ids = list(getattr(backend, "eos_ids", None) or [end_of_turn])
        try:
            for shard in tqdm(todo, desc=f"Shards (process {state.process_index})", disable=not show_progress):
                chunk = slice(shard * size, (shard + 1) * size)
                _process_shard(
                    shard, examples[chunk], tokens[chunk], work, model, backend, end_of_turn, eos_ids, config
                )
        finally:
            if own_backend:
                backend.close()
    state.wait_for_everyone()
    error: Exception | None = None
    if state.is_main_process:
        try:
            _finalize(
                work,
                num_shards,
                config,
                tokenizer,
                examples,
                tokens,
                settings,
                todo_all=[s for s in range(num_shards) if s not in reused],
                reused=reused,
            )
        except Exception as exc:  # re-raised below, after the other processes are released
            error = exc
    state.wait_for_everyone()
    if error is not None:
        raise error
    path = work.output_dir / SUMMARY_FILENAME
    if not path.is_file():
        raise RuntimeError("the main process failed to write the dataset; see its error above")
    return LabelSummary(**json.loads(path.read_text(encoding="utf-8")))


def _finalize(
    work: WorkDir,
    num_shards: int,
    config: LabelConfig,
    tokenizer: Any,
    examples: list[LabelExample],
    tokens: list[_Tokens],
    settings: dict[str, Any],
    todo_all: list[int],
    reused: list[int],
) -> None:
    missing = [s for s in range(num_shards) if not work.shard_path("rows", s).is_dir()]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} have no rows on disk; a process failed. Rerun to finish them.")
    parts = [rows for rows in map(work.load_rows, range(num_shards)) if rows is not None]
    to_generate = [i for i, t in enumerate(tokens) if t.completion is None]
    written = sum(len(part) for part in parts)
    dropped = len(examples) - written
    if not parts:
        raise ValueError(
            f"no row was labelled: the teacher's {len(to_generate)} completions were all cut at max_new_tokens="
            f"{config.max_new_tokens}, empty, or longer than max_length={config.max_length}. Rerun with a larger "
            "--max_new_tokens (and --max_length) into a new --output_dir (this one keeps the cut completions, which a "
            f"rerun here would reuse: {str(work.root)!r}), or give the completions in a 'completion' column."
        )
    dataset = datasets.concatenate_datasets(parts)
    unfinished = 0
    if to_generate:
        for shard in range(num_shards):
            records = read_jsonl(work.shard_path("completions", shard))
            unfinished += sum(not r["finished"] or not r["text"].strip() for r in records or [])
        if dropped:
            logger.warning(
                "%d of %d generated completions were dropped: %d cut at max_new_tokens=%d (or empty), %d longer than "
                "max_length=%s. Raise those settings to keep them.",
                dropped, len(to_generate), unfinished, config.max_new_tokens, dropped - unfinished, config.max_length,
            )  # fmt: skip
    same_prompt = all(e.teacher_prompt == e.prompt for e in examples)
    source: dict[str, Any] = {
        "kind": "ssb-trl label",
        "dataset": {k: getattr(config, k) for k in sorted(INPUT_FIELDS)},
        "teacher_fingerprint": settings["teacher"],
        "student_model": config.student_model_name_or_path,
        "teacher_prompt": "the student's prompt"
        if same_prompt
        else ("the 'teacher_prompt' column" if config.teacher_system_prompt is None else "--teacher_system_prompt"),
        "teacher_sees_student_prompt": same_prompt,
        "teacher_system_prompt": config.teacher_system_prompt,
        "completions": "generated by the teacher" if to_generate else "the dataset's",
        "max_length": config.max_length,
    }
    if to_generate:  # the train-time check that answers are the teacher's samples relies on these
        source["teacher_sampling"] = asdict(config.generation_sampling)
        source["seed"] = config.seed
    metadata = SoftLabelMetadata(
        teacher_model=config.teacher_model_name_or_path,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        top_k=config.soft_label_entries,
        temperature=config.soft_label_temperature,
        prompt_template_version=LABEL_PROMPT_VERSION,
        source=source,
        logprob_dtype=config.logprob_dtype,
        soft_label_mode=config.soft_label_mode,
        soft_label_draws=config.soft_label_draws if config.soft_label_mode == "sampled" else None,
    )
    staging = work.root / "final.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    save_soft_label_dataset(dataset, str(staging), metadata)
    work.publish(staging)
    answer_tokens = sum(sum(mask) for mask in dataset[COMPLETION_MASK])
    data_bytes = sum(path.stat().st_size for path in work.output_dir.glob("data-*.arrow"))
    summary = LabelSummary(
        output_dir=str(work.output_dir),
        rows_in=len(examples),
        rows_written=len(dataset),
        answer_tokens=int(answer_tokens),
        completions_generated=len(to_generate),
        dropped_unfinished=unfinished,
        dropped_too_long=dropped - unfinished,
        shards_done=todo_all,
        shards_reused=reused,
        bytes_per_answer_token=data_bytes / max(answer_tokens, 1),
    )
    write_json(work.output_dir / SUMMARY_FILENAME, summary.to_dict())
    write_text(work.done_path, "done\n")
    logger.info(
        "Labelled %d rows (%d completion tokens, %.0f bytes each on disk) into %s; %d shard(s) done, %d reused",
        len(dataset), answer_tokens, summary.bytes_per_answer_token, work.output_dir, len(todo_all), len(reused),
    )  # fmt: skip
    if config.push_to_hub:
        push_soft_label_dataset_to_hub(dataset, config.hub_dataset_id, metadata, private=config.hub_private)
