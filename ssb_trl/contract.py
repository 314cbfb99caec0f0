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

Dataset-level :class:`SoftLabelMetadata` (teacher, tokenizer fingerprint, K, temperature, prompt version,
source and sampling settings) is stored once, as ``ssb_metadata.json`` beside the data, on disk and on the
Hub alike. In memory it rides in ``Dataset.info.description``, so a loaded dataset carries it into
``SSBTrainer``. Training refuses, naming the row and the fix, any dataset that breaks this contract.
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
import pyarrow.compute as pc

from .storage import SETTINGS_FILENAME, WORK_DIRNAME, load_rows, write_json

logger = logging.getLogger(__name__)

ID, ANSWER, PROMPT, COMPLETION = "id", "answer", "prompt", "completion"
INPUT_IDS, COMPLETION_MASK = "input_ids", "completion_mask"
TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"
LOGPROB_DTYPES = ("float16", "float32")

METADATA_FILENAME = "ssb_metadata.json"
_METADATA_MARKER = "ssb_trl_soft_labels"
FORMAT_VERSION = 1
# fp16 rounding of K log-probs can push their mass a little above 1; beyond this it is a broken row.
MASS_TOLERANCE = 1e-2


def features(logprob_dtype: str = "float16") -> datasets.Features:
    """Arrow schema of a soft-label dataset as data preparation writes it."""
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}.")
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Features(
        {
            ID: datasets.Value("string"),
            ANSWER: datasets.Value("string"),
            PROMPT: datasets.List(message),
            COMPLETION: datasets.List(message),
            INPUT_IDS: datasets.List(datasets.Value("int32")),
            COMPLETION_MASK: datasets.List(datasets.Value("int8")),
            TEACHER_TOPK_IDS: datasets.List(datasets.List(datasets.Value("int32"))),
            TEACHER_TOPK_LOGPROBS: datasets.List(datasets.List(datasets.Value(logprob_dtype))),
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
    format_version: int = FORMAT_VERSION

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
    return SoftLabelError(
        f"{name_or_path!r} holds a data-preparation run that did not finish: its work folder {str(work_dir)!r} is "
        "there but no soft-label dataset was written (the run was stopped, failed, or kept no example; its log "
        "says which). Resume it by rerunning `ssb-trl prepare` with the same settings and "
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


def _row_error(row: int, problem: str, fix: str) -> SoftLabelError:
    return SoftLabelError(f"soft-label dataset row {row}: {problem}. {fix}")


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _is_list(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)
    )


def _rows_with_nulls(array: pa.Array) -> np.ndarray:
    """Per row: does it hold a null at any nesting level? (Arrow would turn a null id into NaN, then into an id.)"""
    bad = pc.is_null(array).to_numpy(zero_copy_only=False).copy()
    if _is_list(array.type) and len(array):
        child_bad = _rows_with_nulls(pc.list_flatten(array))
        if child_bad.any():
            parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
            bad[np.unique(parents[child_bad])] = True
    return bad


def _require_integer_lists(arrow_type: pa.DataType, name: str, allow_bool: bool = False) -> None:
    """Token ids and masks must be stored as integers: float ids would be floored silently by the collator."""
    value_type = arrow_type
    while _is_list(value_type):
        value_type = value_type.value_type
    if not (pa.types.is_integer(value_type) or (allow_bool and pa.types.is_boolean(value_type))):
        raise SoftLabelError(
            f"the soft-label dataset stores {name} as {value_type}, not integers. Token ids and masks must be "
            "integers; float ids would be floored silently. Check that the values are whole numbers and cast the "
            "column to int32 (the schema is ssb_trl.contract.features()), or rebuild the dataset."
        )


def check_soft_label_columns(dataset, columns: tuple[str, str] = (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS)) -> None:
    """The cheap checks first: the dataset is not empty and has the token and soft-label columns."""
    if len(dataset) == 0:
        raise SoftLabelError("the soft-label dataset is empty: data preparation kept no example. Nothing to train on.")
    missing = [c for c in (INPUT_IDS, COMPLETION_MASK, *columns) if c not in dataset.column_names]
    if missing:
        raise SoftLabelError(
            f"the dataset lacks the soft-label column(s) {missing} (it has {dataset.column_names}). SSBTrainer "
            "trains on a soft-label dataset: per row the tokenized prompt + answer (input_ids, completion_mask) and, "
            "for every answer token, the teacher's top-K token ids and log-probs (the format: ssb_trl.contract). "
            "Make one from question/answer data with the recipe: `ssb-trl prepare --source your_questions.jsonl "
            "--model_name_or_path MODEL --output_dir DATA_DIR` (the model answers, is hinted, and becomes the "
            "teacher), then ssb_trl.load_soft_label_dataset(DATA_DIR). Or from your own teacher in Python: "
            "ssb_trl.extract_topk_soft_labels(teacher, sequences, answer_starts, top_k, temperature) -> one row per "
            "example (input_ids, completion_mask, teacher_topk_ids, teacher_topk_logprobs) -> "
            "ssb_trl.save_soft_label_dataset(datasets.Dataset.from_list(rows), DATA_DIR, ssb_trl.SoftLabelMetadata("
            "...)). To train on plain prompt/completion text, use trl.SFTTrainer."
        )


def validate_soft_label_dataset(
    dataset,
    metadata: SoftLabelMetadata | None = None,
    vocab_size: int | None = None,
    columns: tuple[str, str] = (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS),
    check_mass: bool = True,
) -> None:
    """Refuse a dataset that breaks the column contract, naming the first bad row and the fix.

    Vectorised over Arrow buffers, so a large dataset is checked in seconds.
    """
    ids_col, logp_col = columns
    check_soft_label_columns(dataset, columns)
    table = dataset.with_format("arrow")[:]
    if not isinstance(table, pa.Table):  # pragma: no cover - older datasets
        table = pa.Table.from_pydict(table)

    def col(name):
        return table.column(name).combine_chunks()

    for name in (INPUT_IDS, COMPLETION_MASK, ids_col, logp_col):
        bad = _rows_with_nulls(col(name))
        if bad.any():
            raise _row_error(
                _first(bad),
                f"{name} holds a missing (null) value",
                "Rebuild the row: every token needs its id and mask, and every answer token its K ids and log-probs.",
            )
    for name in (INPUT_IDS, COMPLETION_MASK, ids_col):
        _require_integer_lists(table.column(name).type, name, allow_bool=name == COMPLETION_MASK)
    input_len = pc.list_value_length(col(INPUT_IDS)).to_numpy(zero_copy_only=False)
    mask = col(COMPLETION_MASK)
    mask_len = pc.list_value_length(mask).to_numpy(zero_copy_only=False)
    bad = input_len != mask_len
    if bad.any():
        i = _first(bad)
        raise _row_error(i, f"input_ids has {input_len[i]} tokens but completion_mask {mask_len[i]}", "Rebuild it.")
    mask_values = pc.list_flatten(mask).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(mask_len)])
    token_of_row = np.repeat(np.arange(len(mask_len)), mask_len)
    bad = (mask_values != 0) & (mask_values != 1)
    if bad.any():
        j = _first(bad)
        raise _row_error(
            token_of_row[j],
            f"completion_mask holds the value {mask_values[j]} (only 0 = prompt and 1 = answer token are allowed)",
            "Rebuild the row with a 0/1 mask; SSB counts answer tokens by summing it.",
        )
    if vocab_size is not None:
        input_values = pc.list_flatten(col(INPUT_IDS)).to_numpy(zero_copy_only=False)
        bad = (input_values < 0) | (input_values >= vocab_size)
        if bad.any():
            j = _first(bad)
            raise _row_error(
                token_of_row[j],
                f"input_ids holds the token id {input_values[j]}, outside the model's vocabulary [0, {vocab_size})",
                "The row was tokenized for another model; rebuild the dataset with this model's tokenizer "
                "(or resize the model's embeddings if you added tokens).",
            )
    n_answer = np.add.reduceat(mask_values, offsets[:-1]) if len(mask_values) else np.zeros(len(mask_len), np.int64)
    n_answer = np.where(mask_len > 0, n_answer, 0)
    # The answer must be one contiguous span after a non-empty prompt: that is how positions line up.
    answer_start = mask_len - n_answer
    tail_sums = np.array([mask_values[o + s : o + m].sum() for o, s, m in zip(offsets[:-1], answer_start, mask_len)])
    bad = (n_answer == 0) | (answer_start < 1) | (tail_sums != n_answer)
    if bad.any():
        i = _first(bad)
        raise _row_error(
            i,
            "completion_mask must be 0 on a non-empty prompt, then 1 on every answer token to the end "
            f"(got {n_answer[i]} answer tokens of {mask_len[i]})",
            "Check how the row was built; the answer must follow the prompt.",
        )
    ids = col(ids_col)
    logp = col(logp_col)
    ids_rows = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    logp_rows = pc.list_value_length(logp).to_numpy(zero_copy_only=False)
    bad = (ids_rows != n_answer) | (logp_rows != n_answer)
    if bad.any():
        i = _first(bad)
        raise _row_error(
            i,
            f"{n_answer[i]} answer tokens but {ids_rows[i]} rows of {ids_col} and {logp_rows[i]} of {logp_col}",
            "Soft labels must have one row per answer token; the row was truncated or built with another tokenizer. "
            "Rebuild the dataset (do not truncate input_ids alone).",
        )
    ids_inner, logp_inner = pc.list_flatten(ids), pc.list_flatten(logp)
    k_ids = pc.list_value_length(ids_inner).to_numpy(zero_copy_only=False)
    k_logp = pc.list_value_length(logp_inner).to_numpy(zero_copy_only=False)
    token_row = np.repeat(np.arange(len(ids_rows)), ids_rows)
    offsets_ids = np.concatenate([[0], np.cumsum(ids_rows)])
    k = int(metadata.top_k) if metadata is not None else int(k_ids[0])
    bad = (k_ids != k) | (k_logp != k)
    if bad.any():
        i = token_row[_first(bad)]
        raise _row_error(i, f"expected K={k} soft-label entries per token, found {k_ids[bad][0]}", "Rebuild it.")
    flat_ids = pc.list_flatten(ids_inner).to_numpy(zero_copy_only=False).reshape(-1, k)
    flat_logp = pc.list_flatten(logp_inner).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k)
    if vocab_size is not None:
        bad = ((flat_ids < 0) | (flat_ids >= vocab_size)).any(-1)
        if bad.any():
            i = token_row[_first(bad)]
            raise _row_error(
                i,
                f"teacher token id outside the model's vocabulary [0, {vocab_size})",
                "The soft labels were made with another tokenizer/model; rebuild them with this one.",
            )
    bad = ~np.isfinite(flat_logp).all(-1)
    if bad.any():
        i = token_row[_first(bad)]
        raise _row_error(i, "NaN or infinite teacher log-prob", "Rebuild the row; the teacher pass overflowed.")
    if k > 1:
        sorted_ids = np.sort(flat_ids, axis=-1)
        bad = (sorted_ids[:, 1:] == sorted_ids[:, :-1]).any(-1)
        if bad.any():
            t = _first(bad)
            i, answer_token = token_row[t], t - offsets_ids[token_row[t]]
            repeated = sorted_ids[t, 1:][sorted_ids[t, 1:] == sorted_ids[t, :-1]][0]
            raise _row_error(
                i,
                f"answer token {answer_token} lists the teacher id {repeated} twice in its top-K {ids_col}",
                "Each token's top-K ids must be distinct (the K most probable tokens, as torch.topk returns them); "
                "rebuild the soft labels with ssb_trl.extract_topk_soft_labels.",
            )
        bad = (flat_logp[:, 1:] > flat_logp[:, :-1]).any(-1)
        if bad.any():
            t = _first(bad)
            i, answer_token = token_row[t], t - offsets_ids[token_row[t]]
            raise _row_error(
                i,
                f"answer token {answer_token}: {logp_col} increase along K ({flat_logp[t].tolist()[:4]}...); the "
                "top-K must be stored most probable first",
                "Sort each token's ids and log-probs together by descending log-prob (torch.topk(..., sorted=True) "
                "does); ids sorted by value are a common cause.",
            )
    if check_mass:
        mass = np.exp(flat_logp.astype(np.float64)).sum(-1)
        bad = (flat_logp > 1e-3).any(-1) | (mass > 1.0 + MASS_TOLERANCE)
        if bad.any():
            i = token_row[_first(bad)]
            raise _row_error(
                i,
                f"teacher top-K probability mass {mass[bad][0]:.4f} exceeds 1 (log-probs must be normalised over "
                "the full vocabulary)",
                "Store log_softmax(logits / T) values, not raw logits.",
            )


def check_metadata_compatible(
    metadata: SoftLabelMetadata,
    tokenizer,
    temperature: float,
    allow_temperature_renormalization: bool = False,
) -> None:
    """Refuse soft labels made with another tokenizer or at another temperature than configured."""
    if metadata.format_version > FORMAT_VERSION:
        raise SoftLabelError(
            f"soft-label format version {metadata.format_version} is newer than this ssb-trl understands "
            f"({FORMAT_VERSION}); upgrade ssb-trl."
        )
    expected = tokenizer_fingerprint(tokenizer)
    if metadata.tokenizer_fingerprint != expected:
        raise SoftLabelError(
            f"the soft labels were made with another tokenizer (dataset: {metadata.tokenizer_fingerprint}, "
            f"this tokenizer: {expected}; teacher {metadata.teacher_model!r}). Train the model the data was made "
            "for, or rebuild the soft labels with this model's tokenizer."
        )
    if abs(metadata.temperature - temperature) > 1e-6 and not allow_temperature_renormalization:
        raise SoftLabelError(
            f"the soft labels were taken at temperature {metadata.temperature} but SSBConfig.temperature is "
            f"{temperature}. Set temperature={metadata.temperature}, rebuild the soft labels at {temperature}, or set "
            "allow_temperature_renormalization=True to rescale them over the top-K ids (drops the tail bucket)."
        )


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


def check_batch_alignment(num_answer_tokens: int, num_soft_label_rows: int) -> None:
    """A batch must hold exactly one soft-label row per answer token (labels != -100 after the shift)."""
    if num_answer_tokens != num_soft_label_rows:
        raise SoftLabelError(
            f"the batch has {num_answer_tokens} answer tokens but {num_soft_label_rows} soft-label rows; "
            "the collator or dataset misaligned them (was input_ids truncated without its soft labels?)."
        )
