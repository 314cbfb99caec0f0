"""Saving, loading and pushing soft-label datasets (:mod:`ssb_trl.soft_labels.schema`), and converting them.

`save_soft_label_dataset` checks before it writes, so nothing the trainer would refuse is ever stored; a folder a
job left unfinished is named, with the command that resumes it (the job is read from its work folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from ssb_trl.soft_labels.checks import check_soft_label_columns, validate_soft_label_dataset
from ssb_trl.soft_labels.codec import LOGPROB_CODE_DTYPE, SOFT_LABEL_MODES, encode_soft_labels, is_compact
from ssb_trl.soft_labels.schema import (
    COMPLETION_MASK,
    INPUT_IDS,
    METADATA_FILENAME,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    SoftLabelError,
    SoftLabelMetadata,
    features,
)
from ssb_trl.storage import SETTINGS_FILENAME, WORK_DIRNAME, load_rows, write_json

logger = logging.getLogger(__name__)

SOFT_LABEL_FILE_SUFFIXES = (".arrow", ".parquet", ".jsonl", ".json")
"""Single files `load_soft_label_dataset` reads (with `ssb_metadata.json` in the same folder)."""

_NOT_ROWS = frozenset({METADATA_FILENAME, "dataset_info.json", "state.json", "dataset_dict.json"})


def saved_dataset_bytes(name_or_path: str | os.PathLike[str]) -> int | None:
    """Bytes on disk of a local dataset's rows: the data files a loader reads (the ones a ``save_to_disk`` folder's
    ``state.json`` lists; in another folder its data files; or the one file), without its few-KB metadata files, a
    run's work folder or its summary. The one measure of "bytes per answer token" that the ``ssb-trl
    label|prepare`` summaries and ``ssb-trl inspect`` report. None for what is not local (a Hub id)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    if (path / "state.json").is_file():
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            files = [path / entry["filename"] for entry in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError):
            files = list(path.glob("data-*.arrow"))
        return sum(file.stat().st_size for file in files if file.is_file())
    total = 0
    for file in path.rglob("*"):
        parts = file.relative_to(path).parts
        if parts[0] == WORK_DIRNAME or any(part.startswith(".") for part in parts) or file.name in _NOT_ROWS:
            continue
        if file.is_file() and file.suffix.lower() in (*SOFT_LABEL_FILE_SUFFIXES, ".csv"):
            total += file.stat().st_size
    return total


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


def _metadata_file(name_or_path: str, config: str | None = None) -> str | None:
    """Where `ssb_metadata.json` of a local folder or a Hub dataset is (downloaded), or None. A configuration's own
    `<config>/ssb_metadata.json` comes first (configurations may differ in K or T), then the dataset's."""
    candidates = ([f"{config}/{METADATA_FILENAME}"] if config else []) + [METADATA_FILENAME]
    if os.path.isdir(name_or_path):
        found = [os.path.join(name_or_path, c) for c in candidates if os.path.isfile(os.path.join(name_or_path, c))]
        return found[0] if found else None
    from huggingface_hub import hf_hub_download

    for candidate in candidates:
        try:
            return hf_hub_download(name_or_path, candidate, repo_type="dataset")
        except Exception as error:  # noqa: BLE001 - any failure means "no file"; reported by the caller
            logger.debug("no %s for %s: %s", candidate, name_or_path, error)
    return None


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


def unfinished_run_error(folder: Path, name_or_path: str) -> SoftLabelError | None:
    """A job's output_dir that holds its work folder but no published dataset: name the job and how to resume it.

    The job is the ``kind`` its work folder's settings record (``ssb-trl prepare`` when none is recorded)."""
    work_dir = folder / WORK_DIRNAME
    if not work_dir.is_dir() or (folder / "dataset_info.json").is_file():
        return None
    command = "ssb-trl prepare"
    try:
        kind = json.loads((work_dir / SETTINGS_FILENAME).read_text()).get("kind")
        command = kind if isinstance(kind, str) and kind.startswith("ssb-trl ") else command
    except (OSError, ValueError, AttributeError):
        pass
    return SoftLabelError(
        f"{name_or_path!r} holds a `{command}` run that did not finish: its work folder {str(work_dir)!r} is there "
        "but no soft-label dataset was written (the run was stopped, failed, or kept no example; its log says "
        f"which). Resume it by rerunning `{command}` with the same settings and --output_dir {name_or_path} (they "
        f"are recorded in {str(work_dir / SETTINGS_FILENAME)!r}); finished stages are reused. Train on this folder "
        "once that run ends with its summary."
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


def load_soft_label_dataset(
    name_or_path: str, split: str = "train", config: str | None = None
) -> tuple[datasets.Dataset, SoftLabelMetadata]:
    """Load a soft-label dataset with its metadata: a folder, a Hub dataset id, or one data file.

    A single `.arrow` (as `save_to_disk` writes it), `.parquet`, `.jsonl` or `.json` file is one split; its
    metadata is the `ssb_metadata.json` in the same folder. `config` picks a configuration (subset) of a Hub
    dataset, or of a folder laid out like one (`save_to_disk` folders have none). Returns (dataset, metadata), the
    metadata also attached to `dataset.info.description`. Raises `SoftLabelError`, saying what to do, for a
    dataset without (or with a corrupt) `ssb_metadata.json`, a missing split, or the folder of an unfinished run.
    """
    path = Path(name_or_path).expanduser()
    saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    if config is not None and (path.is_file() or saved):
        what = "is one file" if path.is_file() else "was saved with save_to_disk"
        raise SoftLabelError(
            f"--dataset_config {config!r}: {name_or_path!r} {what}, which has splits but no configurations; drop "
            "--dataset_config (and pick a split with --dataset_train_split / --dataset_test_split)"
        )
    if path.is_file():
        dataset = _load_single_file(path, name_or_path)
        metadata_path = path.parent / METADATA_FILENAME
        if not metadata_path.is_file():
            check_soft_label_columns(dataset)  # plain SFT data (prompt/completion, messages): say how to label it
            raise SoftLabelError(
                f"{name_or_path!r} has no soft-label metadata: there is no {METADATA_FILENAME} in its folder "
                f"({str(path.parent)!r}). Copy the {METADATA_FILENAME} written with the data (by `ssb-trl prepare` or "
                "ssb_trl.save_soft_label_dataset) beside the file, or load the folder the dataset was saved to."
            )
    else:
        if path.is_dir():
            unfinished = unfinished_run_error(path, name_or_path)
            if unfinished is not None:
                raise unfinished
            _check_split(path, name_or_path, split)
            _check_not_empty(path, name_or_path)
        dataset = load_rows(name_or_path, split=split, config_name=config)
        metadata_path = _metadata_file(name_or_path, config)
        if metadata_path is None:
            check_soft_label_columns(dataset)  # plain SFT data (prompt/completion, messages): say how to label it
            where = f"neither {config}/{METADATA_FILENAME} nor {METADATA_FILENAME}" if config else METADATA_FILENAME
            raise SoftLabelError(
                f"{name_or_path!r} has no soft-label metadata ({where}). Make it with data preparation "
                "(`ssb-trl prepare` or ssb_trl.prepare.prepare_ssb_data) or ssb_trl.save_soft_label_dataset, or add "
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


def compact_soft_label_dataset(
    dataset: datasets.Dataset, metadata: SoftLabelMetadata, vocab_size: int
) -> tuple[datasets.Dataset, SoftLabelMetadata]:
    """A float (format version 1) soft-label dataset -> the same rows in the compact format, with its metadata.

    Shrinks an existing dataset without a new teacher pass: `compact, meta = compact_soft_label_dataset(dataset,
    metadata, len(tokenizer))`, then `save_soft_label_dataset(compact, DATA_DIR, meta)`. `vocab_size` is the
    teacher's vocabulary (it picks the id dtype).
    """
    if is_compact(metadata.logprob_dtype):
        return dataset, metadata
    compact = features(LOGPROB_CODE_DTYPE, vocab_size=vocab_size, top_k=metadata.top_k)

    def convert(row):
        ids, codes = encode_soft_labels(
            np.asarray(row[TEACHER_TOPK_IDS]),
            np.asarray(row[TEACHER_TOPK_LOGPROBS], dtype=np.float32),
            LOGPROB_CODE_DTYPE,
            vocab_size,
            sampled=metadata.sampled,
        )
        return {TEACHER_TOPK_IDS: ids.tolist(), TEACHER_TOPK_LOGPROBS: codes.tolist()}

    row_features = dataset.features.copy()
    row_features[TEACHER_TOPK_IDS] = compact[TEACHER_TOPK_IDS]
    row_features[TEACHER_TOPK_LOGPROBS] = compact[TEACHER_TOPK_LOGPROBS]
    converted = dataset.map(convert, features=row_features, desc="Compacting soft labels")
    new_metadata = dataclasses.replace(metadata, logprob_dtype=LOGPROB_CODE_DTYPE)
    converted.info.description = new_metadata.to_description()
    return converted, new_metadata
