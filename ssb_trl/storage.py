"""Reading rows and writing files: the one loader for "a file, a folder or the Hub", and the one atomic write.

Every file the library writes goes through :func:`atomic_path`: the content is written under a temporary
name in the same folder and renamed into place (``os.replace`` is atomic on POSIX), so after a crash a
file or folder either holds complete results or does not exist, and a rerun never mistakes half-written
work for finished work.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

WORK_DIRNAME = "ssb_work"
"""Folder inside a preparation output_dir holding its unfinished work (shards, settings); see data/workdir.py."""
SETTINGS_FILENAME = "settings.json"

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
"""Local data files :func:`load_rows` reads, by suffix, and the ``datasets`` builder that reads them."""


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


def _one_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str | None, source: str) -> datasets.Dataset:
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is None:
        return datasets.concatenate_datasets(list(loaded.values()))
    if split not in loaded:
        raise ValueError(
            f"{source!r} has no split {split!r}; its splits are {list(loaded)}: choose one of them "
            "(--source_split in the recipes, split=... in Python)"
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


def _load_data_file(path: Path, source: str) -> datasets.Dataset:
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
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parse errors (DatasetGenerationError, ArrowInvalid, UnicodeDecodeError)
        where = _first_bad_line(path) if builder in ("json", "csv") else None
        detail = where or f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot read data file {str(path)!r}: {detail}") from exc


def hub_offline() -> bool:
    """Whether the Hub is switched off for this process (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_rows(
    source: str, split: str | None = "train", config_name: str | None = None, data_files: Any = None
) -> datasets.Dataset:
    """Rows of a data file (``.jsonl``/``.json``/``.parquet``/``.csv``), a folder or a Hub dataset.

    A folder is either one written by ``save_to_disk`` or one of data files named by split (read the way
    ``datasets`` reads a Hub repository). A single file is one split, whatever ``split`` says.
    ``split=None`` concatenates all splits. Raises ``FileNotFoundError`` for a local path that does not
    exist and ``ValueError``, naming the source and what was expected, for anything else that fails.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return _load_data_file(path, source)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _one_split(datasets.load_from_disk(str(path)), split, source)
    if not path.exists() and (path.suffix.lower() in DATA_FILE_BUILDERS or source.startswith((".", "/", "~"))):
        raise FileNotFoundError(f"{source!r} does not exist")
    name = str(path) if path.is_dir() else source
    try:
        loaded = datasets.load_dataset(name, config_name, split=split, data_files=data_files)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        if "Unknown split" in str(exc):
            raise ValueError(
                f"{source!r} has no split {split!r} ({exc}); choose one of its splits "
                "(--source_split in the recipes, split=... in Python)"
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
    return _one_split(loaded, split, source)
