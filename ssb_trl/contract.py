"""THE soft-label dataset format: the contract between data preparation and training.

One row per training example (TRL prompt-completion format plus the soft labels):

  id, answer             question id and gold answer (provenance; not read by training)
  prompt, completion     conversational messages; the prompt is the *student* prompt (no hints)
  input_ids              chat-templated student prompt + teacher answer, ending with the end-of-turn token
  completion_mask        1 on answer tokens (end-of-turn included), 0 on the prompt
  teacher_topk_ids       [n_answer][K] int32, most probable first
  teacher_topk_logprobs  [n_answer][K] float16/32: log-probs over the full vocabulary at `temperature`

Row j of the soft labels is the teacher's distribution over answer token j (predicted at position
prompt_len + j - 1). The tail bucket log(1 - sum(exp(topk))) is derived, never stored.

Format version 2 adds the compact soft labels (metadata `logprob_dtype="uint8"`, :mod:`ssb_trl.compact_labels`):
the same two columns, ids as uint16 (vocabulary <= 65,536) or uint32 and log-probs as uint8 codes
(log-prob = -code / 16), both in fixed-size lists of K: 3 bytes per entry instead of 6. Version 1 datasets
(float log-probs) load and train as before; the collator decodes either to float32 log-probs.

Format version 3 adds sampled soft labels (metadata `soft_label_mode="sampled"`, `soft_label_draws=N`,
:mod:`ssb_trl.sampled_labels`): the same columns, each token's K = N entries hold the distinct ids drawn N times
from the teacher's distribution at `temperature`, with log(count / N), then padding ids at a negligible log-prob.
Their mass is 1 (no tail) and the answer's own token need not be among them. Readers before version 3 would take
them for top-K labels (and could rescale them to another temperature, which biases them), so they refuse them.

Dataset-level :class:`SoftLabelMetadata` (teacher, tokenizer fingerprint, K, temperature, prompt version,
source and sampling settings) is stored once, as ``ssb_metadata.json`` beside the data, on disk and on the
Hub alike. In memory it rides in ``Dataset.info.description``, so a loaded dataset carries it into
``SSBTrainer``.

This module is the one place the format is defined (column names, Arrow features, metadata, format version)
and stored (save / load / push). The checks that refuse a dataset breaking it, naming the row and the fix,
live in :mod:`ssb_trl.soft_label_checks`; their names stay importable from here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from .compact_labels import COMPACT_FORMAT_VERSION, LOGPROB_CODE_DTYPE, id_dtype_for_vocab
from .storage import SETTINGS_FILENAME, WORK_DIRNAME, load_rows, write_json

logger = logging.getLogger(__name__)

ID, ANSWER, PROMPT, COMPLETION = "id", "answer", "prompt", "completion"
INPUT_IDS, COMPLETION_MASK = "input_ids", "completion_mask"
TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"
LOGPROB_DTYPES = ("float16", "float32", LOGPROB_CODE_DTYPE)
"""float16/float32: log-probs as floats (format version 1); uint8: compact 8-bit codes (version 2)."""

METADATA_FILENAME = "ssb_metadata.json"
_METADATA_MARKER = "ssb_trl_soft_labels"
SAMPLED_FORMAT_VERSION = 3
"""The version written for sampled soft labels (any log-prob dtype)."""
FORMAT_VERSION = SAMPLED_FORMAT_VERSION
"""The newest format this ssb-trl reads (and writes for sampled or compact soft labels)."""
TOPK_FORMAT_VERSION = 1
"""The version written for top-K float log-probs, which every ssb-trl reads."""
SOFT_LABEL_MODES = ("topk", "sampled")
"""topk: the K most probable ids per token; sampled: N draws from the teacher's distribution (unbiased)."""

_CHECKS = (
    "MASS_TOLERANCE",
    "check_batch_alignment",
    "check_metadata_compatible",
    "check_soft_label_columns",
    "validate_soft_label_dataset",
)
"""Names defined in :mod:`ssb_trl.soft_label_checks` and still importable from here (see `__getattr__`)."""


def __getattr__(name: str):
    """`from ssb_trl.contract import validate_soft_label_dataset` keeps working: the checks import this module,
    so they are looked up on first use instead of imported at the top (which would be circular)."""
    if name in _CHECKS:
        from . import soft_label_checks

        return getattr(soft_label_checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def features(
    logprob_dtype: str = "float16", vocab_size: int | None = None, top_k: int | None = None
) -> datasets.Features:
    """Arrow schema of a soft-label dataset as data preparation writes it.

    For compact soft labels (`logprob_dtype="uint8"`) the ids take the narrowest dtype of `vocab_size` (uint32
    when it is not given) and, with `top_k`, each token's K entries are a fixed-size list (no offsets).
    """
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}.")
    id_dtype, k = "int32", None
    if logprob_dtype == LOGPROB_CODE_DTYPE:
        id_dtype = id_dtype_for_vocab(vocab_size) if vocab_size is not None else "uint32"
        k = top_k
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Features(
        {
            ID: datasets.Value("string"),
            ANSWER: datasets.Value("string"),
            PROMPT: datasets.List(message),
            COMPLETION: datasets.List(message),
            INPUT_IDS: datasets.List(datasets.Value("int32")),
            COMPLETION_MASK: datasets.List(datasets.Value("int8")),
            TEACHER_TOPK_IDS: datasets.List(datasets.List(datasets.Value(id_dtype), length=k or -1)),
            TEACHER_TOPK_LOGPROBS: datasets.List(datasets.List(datasets.Value(logprob_dtype), length=k or -1)),
        }
    )


class SoftLabelError(ValueError):
    """A soft-label dataset breaks the contract; the message names the row and the fix."""


@dataclass
class SoftLabelMetadata:
    """How a soft-label dataset was made; checked at train time."""

    teacher_model: str
    tokenizer_fingerprint: dict
    top_k: int
    temperature: float
    prompt_template_version: str = "unknown"
    source: dict = field(default_factory=dict)
    logprob_dtype: str = "float16"
    format_version: int = TOPK_FORMAT_VERSION
    soft_label_mode: str = "topk"
    """"topk" (the K most probable ids) or "sampled" (N draws; `top_k` is then N); datasets without it are top-K."""
    soft_label_draws: int | None = None
    """N, the draws per token of sampled soft labels; None for top-K."""

    def __post_init__(self):
        if self.logprob_dtype == LOGPROB_CODE_DTYPE:  # readers before version 2 cannot decode the codes
            self.format_version = max(self.format_version, COMPACT_FORMAT_VERSION)
        if self.soft_label_mode not in SOFT_LABEL_MODES:
            raise ValueError(f"soft_label_mode must be one of {SOFT_LABEL_MODES}, got {self.soft_label_mode!r}.")
        if self.sampled and self.soft_label_draws != self.top_k:
            raise ValueError(
                f"sampled soft labels store their N draws as N entries per token: soft_label_draws "
                f"({self.soft_label_draws}) must equal top_k ({self.top_k})."
            )
        if self.soft_label_mode == "sampled":  # readers before version 3 would take the draws for a top-K
            self.format_version = max(self.format_version, SAMPLED_FORMAT_VERSION)

    @property
    def sampled(self) -> bool:
        """Sampled soft labels (an unbiased estimate of the full distribution), not top-K."""
        return self.soft_label_mode == "sampled"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SoftLabelMetadata:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_description(self) -> str:
        """The in-memory carrier: a JSON string for `Dataset.info.description`."""
        return json.dumps({_METADATA_MARKER: self.to_dict()}, sort_keys=True)

    @classmethod
    def from_description(cls, description: str | None) -> SoftLabelMetadata | None:
        """Parse metadata from `Dataset.info.description`; None if it holds none."""
        if not description:
            return None
        try:
            data = json.loads(description)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or _METADATA_MARKER not in data:
            return None
        return cls.from_dict(data[_METADATA_MARKER])


def tokenizer_fingerprint(tokenizer) -> dict:
    """Vocabulary size plus a hash of the token -> id map: two tokenizers that agree here encode alike."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    return {"vocab_size": len(vocab), "sha256": digest.hexdigest()[:16]}


@contextmanager
def _without_description(dataset: datasets.Dataset) -> Iterator[None]:
    """Write a dataset with an empty `info.description`: the metadata is stored in its own file only."""
    saved, dataset.info.description = dataset.info.description, ""
    try:
        yield
    finally:
        dataset.info.description = saved


def save_soft_label_dataset(dataset: datasets.Dataset, output_dir: str, metadata: SoftLabelMetadata) -> None:
    """Validate, `save_to_disk`, and write the metadata beside the data as `ssb_metadata.json`."""
    from .soft_label_checks import validate_soft_label_dataset  # the checks module builds on this one

    validate_soft_label_dataset(dataset, metadata=metadata)
    with _without_description(dataset):
        dataset.save_to_disk(output_dir)
    write_json(Path(output_dir) / METADATA_FILENAME, metadata.to_dict())
    dataset.info.description = metadata.to_description()


def push_soft_label_dataset_to_hub(
    dataset: datasets.Dataset, repo_id: str, metadata: SoftLabelMetadata, **kwargs
) -> None:
    """Push to the Hub with `ssb_metadata.json` beside the data. Untested here (no network)."""
    from huggingface_hub import HfApi

    with _without_description(dataset):
        dataset.push_to_hub(repo_id, **kwargs)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(metadata.to_dict(), indent=2, sort_keys=True).encode(),
        path_in_repo=METADATA_FILENAME,
        repo_id=repo_id,
        repo_type="dataset",
    )


def _metadata_file(name_or_path: str) -> str | None:
    """Where `ssb_metadata.json` of a local folder or a Hub dataset is (downloaded), or None."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, METADATA_FILENAME)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(name_or_path, METADATA_FILENAME, repo_type="dataset")
    except Exception as error:  # noqa: BLE001 - any failure means "no file"; reported by the caller
        logger.debug("no %s for %s: %s", METADATA_FILENAME, name_or_path, error)
        return None


SOFT_LABEL_FILE_SUFFIXES = (".arrow", ".parquet", ".jsonl", ".json")
"""Single files `load_soft_label_dataset` reads (with `ssb_metadata.json` in the same folder)."""


def read_metadata_file(path: str | os.PathLike[str]) -> SoftLabelMetadata:
    """Parse and check an `ssb_metadata.json`; a corrupt or incomplete file gets a `SoftLabelError` naming it."""
    fix = (
        f"It is written by data preparation and ssb_trl.save_soft_label_dataset: restore {METADATA_FILENAME} from "
        "where the dataset was made (the preparation output_dir or the Hub repository), or rebuild the dataset."
    )
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SoftLabelError(f"{str(path)!r} is not valid JSON ({error}). {fix}") from error
    if not isinstance(data, dict):
        raise SoftLabelError(f"{str(path)!r} holds a JSON {type(data).__name__}, not an object of fields. {fix}")
    problems = [f"{name} is missing" for name in ("teacher_model", "tokenizer_fingerprint", "top_k", "temperature")]
    problems = [p for p in problems if p.split()[0] not in data]
    top_k, temperature = data.get("top_k"), data.get("temperature")
    if "top_k" in data and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        problems.append(f"top_k must be an integer >= 1, got {top_k!r}")
    if "temperature" in data and not (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and np.isfinite(temperature)
        and temperature > 0
    ):
        problems.append(f"temperature must be a finite number > 0, got {temperature!r}")
    mode, draws = data.get("soft_label_mode", "topk"), data.get("soft_label_draws")
    if mode not in SOFT_LABEL_MODES:
        problems.append(f"soft_label_mode must be one of {SOFT_LABEL_MODES}, got {mode!r}")
    elif mode == "sampled" and not (isinstance(draws, int) and not isinstance(draws, bool) and draws == top_k):
        problems.append(
            f"sampled soft labels need soft_label_draws = top_k (N draws stored as N entries per token), got "
            f"soft_label_draws={draws!r} and top_k={top_k!r}"
        )
    if "tokenizer_fingerprint" in data and not isinstance(data["tokenizer_fingerprint"], dict):
        problems.append(f"tokenizer_fingerprint must be an object, got {data['tokenizer_fingerprint']!r}")
    if problems:
        raise SoftLabelError(f"{str(path)!r} is not valid soft-label metadata: {'; '.join(problems)}. {fix}")
    return SoftLabelMetadata.from_dict(data)


def _unfinished_preparation_error(folder: Path, name_or_path: str) -> SoftLabelError | None:
    """A preparation output_dir that holds the run's work folder but no published dataset: say how to resume."""
    work_dir = folder / WORK_DIRNAME
    if not work_dir.is_dir() or (folder / "dataset_info.json").is_file():
        return None
    command, run = "ssb-trl prepare", "data-preparation run"
    try:  # `ssb-trl label` writes the same kind of work folder and records its kind
        if json.loads((work_dir / SETTINGS_FILENAME).read_text()).get("kind") == "ssb-trl label":
            command, run = "ssb-trl label", "labelling run"
    except (OSError, ValueError, AttributeError):
        pass
    return SoftLabelError(
        f"{name_or_path!r} holds a {run} that did not finish: its work folder {str(work_dir)!r} is "
        "there but no soft-label dataset was written (the run was stopped, failed, or kept no example; its log "
        f"says which). Resume it by rerunning `{command}` with the same settings and "
        f"--output_dir {name_or_path} (they are recorded in {str(work_dir / SETTINGS_FILENAME)!r}); finished stages are "
        "reused. Train on this folder once that run ends with its summary."
    )


def _load_single_file(path: Path, name_or_path: str) -> datasets.Dataset:
    suffix = path.suffix.lower()
    if suffix not in SOFT_LABEL_FILE_SUFFIXES:
        raise SoftLabelError(
            f"{name_or_path!r} is a {suffix or 'suffix-less'} file; a soft-label dataset is a folder (written by "
            f"`ssb-trl prepare` or ssb_trl.save_soft_label_dataset), a Hub dataset id, or one "
            f"{'/'.join(SOFT_LABEL_FILE_SUFFIXES)} file with {METADATA_FILENAME} in the same folder."
        )
    if suffix != ".arrow":
        return load_rows(str(path), split=None)
    state = path.parent / "state.json"
    if state.is_file():  # one file of a folder written by save_to_disk: the other files hold more rows
        try:
            files = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
        except (OSError, ValueError, TypeError, KeyError):
            files = []
        if len(files) > 1:
            raise SoftLabelError(
                f"{name_or_path!r} is 1 of the {len(files)} files of the dataset saved in {str(path.parent)!r}; "
                f"loading it alone would drop the other rows. Load the folder: "
                f"load_soft_label_dataset({str(path.parent)!r})."
            )
    try:
        return datasets.Dataset.from_file(str(path))  # save_to_disk's streaming format, memory-mapped
    except (pa.ArrowInvalid, OSError):
        return datasets.load_dataset("arrow", data_files=str(path), split="train")  # the Arrow IPC file format


def _check_split(folder: Path, name_or_path: str, split: str | None) -> None:
    """A folder saved from a DatasetDict must have the asked split; say which ones it has."""
    dict_file = folder / "dataset_dict.json"
    if split is None or not dict_file.is_file():
        return
    try:
        splits = list(json.loads(dict_file.read_text(encoding="utf-8"))["splits"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if split not in splits:
        raise SoftLabelError(
            f"{name_or_path!r} has the splits {splits}, not {split!r}. Pass split=one of them (`ssb-trl train`: "
            "--dataset_train_split NAME)."
        )


def _check_not_empty(folder: Path, name_or_path: str) -> None:
    """`datasets` writes an empty dataset as a folder without data files, then fails to load it (IndexError)."""
    state = folder / "state.json"
    try:
        data_files = json.loads(state.read_text(encoding="utf-8")).get("_data_files") if state.is_file() else None
    except (OSError, ValueError, AttributeError):
        return
    if data_files == []:
        raise SoftLabelError(
            f"the soft-label dataset {name_or_path!r} is empty: it was saved with no rows. Nothing to train on; "
            "rebuild it (`ssb-trl prepare` refuses to write an empty dataset and says why no example was kept)."
        )


def load_soft_label_dataset(name_or_path: str, split: str = "train") -> tuple[datasets.Dataset, SoftLabelMetadata]:
    """Load a soft-label dataset with its metadata: a folder, a Hub dataset id, or one data file.

    A single `.arrow` (as `save_to_disk` writes it), `.parquet`, `.jsonl` or `.json` file is one split; its
    metadata is the `ssb_metadata.json` in the same folder. Returns (dataset, metadata), the metadata also
    attached to `dataset.info.description`. Raises `SoftLabelError`, saying what to do, for a dataset without
    (or with a corrupt) `ssb_metadata.json`, a missing split, or the folder of an unfinished preparation run.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        dataset = _load_single_file(path, name_or_path)
        metadata_path = path.parent / METADATA_FILENAME
        if not metadata_path.is_file():
            raise SoftLabelError(
                f"{name_or_path!r} has no soft-label metadata: there is no {METADATA_FILENAME} in its folder "
                f"({str(path.parent)!r}). Copy the {METADATA_FILENAME} written with the data (by `ssb-trl prepare` or "
                "ssb_trl.save_soft_label_dataset) beside the file, or load the folder the dataset was saved to."
            )
    else:
        if path.is_dir():
            unfinished = _unfinished_preparation_error(path, name_or_path)
            if unfinished is not None:
                raise unfinished
            _check_split(path, name_or_path, split)
            _check_not_empty(path, name_or_path)
        dataset = load_rows(name_or_path, split=split)
        metadata_path = _metadata_file(name_or_path)
        if metadata_path is None:
            raise SoftLabelError(
                f"{name_or_path!r} has no soft-label metadata ({METADATA_FILENAME}). Make it with data preparation "
                "(`ssb-trl prepare` or ssb_trl.data.prepare_ssb_data) or ssb_trl.save_soft_label_dataset, or add "
                "the file."
            )
    metadata = read_metadata_file(metadata_path)
    dataset.info.description = metadata.to_description()
    return dataset, metadata


def truncate_soft_label_dataset(
    dataset: datasets.Dataset,
    max_length: int,
    columns: tuple[str, str] = (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS),
) -> datasets.Dataset:
    """Cut rows to `max_length` tokens, cutting their soft labels with them; drop rows left with no answer."""
    ids_column, logprobs_column = columns
    lengths = [len(ids) for ids in dataset[INPUT_IDS]]
    if max(lengths) <= max_length:
        return dataset

    def cut(example):
        n_prompt = len(example[COMPLETION_MASK]) - sum(example[COMPLETION_MASK])
        keep = max(0, max_length - n_prompt)
        return {
            INPUT_IDS: example[INPUT_IDS][:max_length],
            COMPLETION_MASK: example[COMPLETION_MASK][:max_length],
            ids_column: example[ids_column][:keep],
            logprobs_column: example[logprobs_column][:keep],
        }

    too_long = sum(length > max_length for length in lengths)
    truncated = dataset.map(cut, desc=f"Truncating to max_length={max_length}")
    kept = truncated.filter(lambda example: sum(example[COMPLETION_MASK]) > 0)
    logger.warning(
        "%d of %d rows are longer than max_length=%d and were truncated with their soft labels; %d rows had no answer "
        "token left and were dropped. Raise max_length to keep whole answers (the end-of-turn token teaches stopping).",
        too_long,
        len(dataset),
        max_length,
        len(dataset) - len(kept),
    )
    return kept
