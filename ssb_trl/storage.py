"""Reading rows and writing files: the one loader for "a file, a folder or the Hub", and the one atomic write.

Every file the library writes goes through :func:`atomic_path`: the content is written under a temporary
name in the same folder and renamed into place (``os.replace`` is atomic on POSIX), so after a crash a
file or folder either holds complete results or does not exist, and a rerun never mistakes half-written
work for finished work.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

WORK_DIRNAME = "ssb_work"
"""Folder inside a preparation output_dir holding its unfinished work (shards, settings); see data/workdir.py."""
SETTINGS_FILENAME = "settings.json"

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
"""Local data files :func:`load_rows` reads, by suffix, and the ``datasets`` builder that reads them."""


def cache_root() -> Path:
    """Where ssb-trl caches derived artefacts (override with ``SSB_TRL_CACHE``)."""
    return Path(os.environ.get("SSB_TRL_CACHE", Path.home() / ".cache" / "ssb_trl"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content, cached by (resolved path, size, mtime_ns).

    Runs identify models and question files by content; hashing multi-GB weights takes seconds per GB, so
    each file is read once and its digest reused until the file changes (a rewrite changes its mtime).
    """
    path = Path(path).resolve()
    stat = path.stat()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    cache_file = cache_root() / "file_sha256.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    try:
        write_text(cache_file, json.dumps(cache, indent=0, sort_keys=True))
    except OSError:  # a read-only cache only costs the hashing next time
        pass
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str], directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it replaces ``path``, on failure it is removed.

    With ``directory=True`` the temporary is a folder, and an existing folder at ``path`` is replaced
    whole (moved aside first, since a rename cannot overwrite a non-empty folder). If another process
    put an equivalent folder in place meanwhile, the rename fails and the caller sees the error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.is_dir():
            stale = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale.", dir=path.parent))
            os.replace(path, stale / path.name)
            shutil.rmtree(stale, ignore_errors=True)
        elif not directory:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], data: Any, sort_keys: bool = True) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False))


def check_writable_dir(path: str | os.PathLike[str], what: str = "output_dir") -> Path:
    """Create ``path`` if needed and prove a file can be written in it; raise ``ValueError`` saying how to fix it.

    Called before expensive work starts, so that results are never computed only to be lost at the first write.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a folder; pass a folder path (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what} {str(path)!r} is not writable ({exc}); pass a folder you can write to") from exc
    return path


_SPLIT_FLAGS = (
    "--dataset_split (TRL's --dataset_train_split / --dataset_test_split) in prepare, label, evaluate and inspect, "
    "--dataset_train_split in train"
)


def _refuse_other_split(split: str | None, source: str, what: str) -> None:
    """A source of one split (a file, a dataset saved without split names) is read as 'train': asking it for
    another split is refused, never answered with the rows of 'train'."""
    if split not in (None, "train"):
        raise ValueError(
            f"{source!r} is {what}, which holds one split, read as 'train'; it has no split {split!r}. Ask for "
            f"'train' or leave the split unset ({_SPLIT_FLAGS}; split=... in Python), or point at a folder with a "
            f"file per split (train.jsonl, {split}.jsonl) or a dataset saved with its splits"
        )


def _one_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str | None, source: str) -> datasets.Dataset:
    if not isinstance(loaded, datasets.DatasetDict):
        _refuse_other_split(split, source, "a dataset saved without split names")
        return loaded
    if split is None:
        return datasets.concatenate_datasets(list(loaded.values()))
    if split not in loaded:
        raise ValueError(
            f"{source!r} has no split {split!r}; its splits are {list(loaded)}: choose one of them "
            "(--dataset_split in the recipes, split=... in Python)"
        )
    return loaded[split]


def _first_bad_line(path: Path) -> str | None:
    """Where a text data file stops being valid UTF-8 (or, for JSON Lines, valid JSON): 'line N: what', or None."""
    is_jsonl = path.suffix.lower() == ".jsonl"
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"line {number} is not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "re-save the file as UTF-8"
                )
            if is_jsonl and line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return (
                        f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}); one JSON object per line"
                    )
    return None


class _NumberText(str):
    """A JSON number kept as the text it was written as (``12345678901234567890``, ``1.50``)."""


def _column_texts(path: Path, builder: str, columns: Sequence[str]) -> dict[str, list[str | None]]:
    """The values of ``columns`` in a JSON/JSON Lines/CSV file exactly as written, numbers included.

    ``datasets`` infers one type per column: a gold answer above int64, or above 2**53 in a column that also
    holds a float, becomes a float and loses digits, so a right answer would be graded wrong. Columns that
    hold anything but text and numbers (lists, objects) are left out: their inferred type stands.
    """
    if builder == "csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not a column name
            records: list[Any] = list(csv.DictReader(handle))
        return {
            column: [record.get(column) or None for record in records]
            for column in columns
            if records and column in records[0]
        }
    text = path.read_text(encoding="utf-8")
    hooks = {"parse_int": _NumberText, "parse_float": _NumberText}
    try:
        records = json.loads(text, **hooks)
    except json.JSONDecodeError:
        records = None
    if not isinstance(records, list):  # JSON Lines (or a one-object file)
        records = [json.loads(line, **hooks) for line in text.splitlines() if line.strip()]
    if not all(isinstance(record, dict) for record in records):
        return {}
    texts = {}
    for column in columns:
        values = [record.get(column) for record in records]
        if all(value is None or isinstance(value, str) for value in values):
            texts[column] = [None if value is None else str(value) for value in values]
    return texts


def _with_text_columns(
    dataset: datasets.Dataset, path: Path, builder: str, columns: Sequence[str]
) -> datasets.Dataset:
    """``dataset`` with ``columns`` replaced by their values as written in the file (see :func:`_column_texts`)."""
    wanted = [column for column in columns if column in dataset.column_names]
    if builder == "parquet" or not wanted:  # parquet stores its types: an int64 stays an int
        return dataset
    order = dataset.column_names
    for column, values in _column_texts(path, builder, wanted).items():
        if len(values) == len(dataset):
            dataset = dataset.remove_columns(column).add_column(column, values)
    return dataset.select_columns(order)


def _no_rows_shape(path: Path, builder: str) -> str:
    """What a data file without rows holds instead: a header only, an empty JSON list, ..."""
    if builder == "csv":
        return "a CSV header and no row below it"
    if builder == "json":
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("["):
            return (
                "an empty JSON list" if text.replace(" ", "").replace("\n", "") == "[]" else "a JSON list of no rows"
            )
        return "no JSON object"
    return "zero rows"


def _load_data_file(path: Path, source: str, text_columns: Sequence[str] = ()) -> datasets.Dataset:
    builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"unsupported file type {path.suffix!r} for {source!r}; use one of {sorted(DATA_FILE_BUILDERS)}"
        )
    with open(path, "rb") as handle:
        empty = not handle.read(1 << 16).strip()
    if empty and path.stat().st_size < (1 << 16):
        raise ValueError(f"data file {str(path)!r} is empty (no rows); fill it, or point at another file")
    if builder in ("json", "csv"):
        # Arrow stores invalid UTF-8 unchecked and fails only when a row is read: check the text up front.
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"cannot read data file {str(path)!r}: {_first_bad_line(path)}") from None
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parse errors (DatasetGenerationError, ArrowInvalid, UnicodeDecodeError)
        if "corresponds to no data" in str(exc):  # datasets' words for a file that parsed to zero rows
            raise ValueError(
                f"data file {str(path)!r} holds no rows ({_no_rows_shape(path, builder)}); fill it, or point at "
                "another file"
            ) from exc
        where = _first_bad_line(path) if builder in ("json", "csv") else None
        detail = where or f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot read data file {str(path)!r}: {detail}") from exc
    return _with_text_columns(dataset, path, builder, text_columns)


def _data_files_by_split(folder: Path) -> dict[str, list[Path]]:
    """The data files of a folder by split, found the way ``datasets`` finds a repository's (split names in file
    names, else one 'train' split); only the formats :func:`load_rows` reads."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(folder))
    except Exception:  # EmptyDatasetError: no data files at all
        return {}
    resolved = DataFilesDict.from_patterns(patterns, base_path=str(folder))
    by_split = {
        str(split): [Path(name) for name in files if Path(name).suffix.lower() in DATA_FILE_BUILDERS]
        for split, files in resolved.items()
    }
    return {split: files for split, files in by_split.items() if files}


def _load_data_folder(
    folder: Path, by_split: dict[str, list[Path]], split: str | None, source: str, text_columns: Sequence[str]
) -> datasets.Dataset:
    """One split (``None``: all) of a folder of data files, each file read by :func:`_load_data_file`.

    A split made of files of different formats is refused: ``datasets`` would silently read only the files of
    its most common format.
    """
    for name, files in by_split.items():
        formats = {DATA_FILE_BUILDERS[path.suffix.lower()] for path in files}
        if len(formats) > 1:
            listing = ", ".join(
                f"{os.path.relpath(path, folder)} ({DATA_FILE_BUILDERS[path.suffix.lower()]})" for path in files
            )
            raise ValueError(
                f"folder {source!r} mixes data formats in split {name!r}: {listing}. A split must be files of one "
                "format (datasets would read only one format and drop the other rows silently): convert them to "
                "one format, move the others out, or name files by split (train.jsonl, test.csv)"
            )
    if split is not None and split not in by_split:
        raise ValueError(
            f"{source!r} has no split {split!r}; its splits are {list(by_split)}: choose one of them "
            "(--dataset_split in the recipes, split=... in Python)"
        )
    files = [path for name, paths in by_split.items() if split is None or name == split for path in paths]
    parts = [_load_data_file(path, source, text_columns) for path in files]
    try:
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except ValueError as exc:
        listing = ", ".join(os.path.relpath(path, folder) for path in files)
        raise ValueError(f"the files of {source!r} ({listing}) have different columns or types: {exc}") from exc


def hub_offline() -> bool:
    """Whether the Hub is switched off for this process (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def require_hub_access(flag: str, note: str = "") -> None:
    """Refuse an upload that would fail at the end of the run: the Hub switched off, no token, or unreachable.

    Checked when the command starts, so that hours of work are not followed by a traceback from the upload.
    The reachability probe is one TCP connection to the Hub's host (skipped behind a proxy, which it cannot see).
    """
    note = f" ({note})" if note else ""
    if hub_offline():
        raise ValueError(
            f"{flag} uploads to the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE "
            f"is set): unset it on a machine that can reach the Hub, or drop {flag}{note}"
        )
    from huggingface_hub import constants, get_token

    if not get_token():
        raise ValueError(
            f"{flag} uploads to the Hugging Face Hub, but no token is set: log in (`hf auth login`) or set HF_TOKEN, "
            f"or drop {flag}{note}"
        )
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=10).close()
    except OSError as exc:
        raise ValueError(
            f"{flag} uploads to {constants.ENDPOINT}, which cannot be reached from here ({exc}); check the network, "
            f"or drop {flag}{note}"
        ) from exc


def load_rows(
    source: str,
    split: str | None = "train",
    config_name: str | None = None,
    data_files: Any = None,
    text_columns: Sequence[str] = (),
) -> datasets.Dataset:
    """Rows of a data file (``.jsonl``/``.json``/``.parquet``/``.csv``), a folder or a Hub dataset.

    A folder is either one written by ``save_to_disk`` or one of data files named by split (read the way
    ``datasets`` reads a Hub repository). A single file, or a folder saved from one ``Dataset``, is one split
    read as 'train': another ``split`` is refused (it used to be answered with those rows, silently).
    ``split=None`` concatenates all splits. ``text_columns`` of local JSON and CSV files are read as the text
    written there (a number too: ``datasets`` would turn large integers into floats). Raises
    ``FileNotFoundError`` for a local path that does not exist and ``ValueError``, naming the source and what
    was expected, for anything else that fails.
    """
    path = Path(source).expanduser()
    if path.is_file():
        _refuse_other_split(split, source, "a single file")
        return _load_data_file(path, source, text_columns)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _one_split(datasets.load_from_disk(str(path)), split, source)
    # A configuration is read by `datasets` from the folder's README (`configs:`), as from a Hub repository.
    by_split = _data_files_by_split(path) if path.is_dir() and data_files is None and config_name is None else {}
    if by_split:
        return _load_data_folder(path, by_split, split, source, text_columns)
    if not path.exists() and (path.suffix.lower() in DATA_FILE_BUILDERS or source.startswith((".", "/", "~"))):
        raise FileNotFoundError(f"{source!r} does not exist")
    name = str(path) if path.is_dir() else source
    try:
        loaded = datasets.load_dataset(name, config_name, split=split, data_files=data_files)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        if "Unknown split" in str(exc):
            raise ValueError(
                f"{source!r} has no split {split!r} ({exc}); choose one of its splits "
                "(--dataset_split in the recipes, split=... in Python)"
            ) from exc
        hint = (
            " Offline mode is on, so it must already be in the local cache (or pass a local file instead)."
            if hub_offline()
            else ""
        )
        raise ValueError(
            f"could not load rows from {source!r} (config={config_name!r}, split={split!r}): {exc}. Expected a Hub "
            f"dataset name, a local .jsonl/.json/.parquet/.csv file or a dataset folder.{hint}"
        ) from exc
    if isinstance(loaded, datasets.Dataset):  # load_dataset picked the split asked for
        return loaded
    return _one_split(loaded, split, source)
