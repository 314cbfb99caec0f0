"""The on-disk state of a resumable job: its settings, one file per shard and stage, and the published dataset.

Every write goes through :func:`ssb_trl.storage.atomic_path`, so after a crash a file either holds complete
results or does not exist, and a rerun never takes half-written work for finished work. A stage's records are a
JSONL file per shard (one record per input, in order); the last stage, ``rows``, is a saved dataset per shard.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ssb_trl.jobs.lock import RunLock
from ssb_trl.jobs.settings import ROWS_STAGE
from ssb_trl.storage import SETTINGS_FILENAME, WORK_DIRNAME, atomic_path, write_text

logger = logging.getLogger(__name__)

EMPTY_MARKER = "EMPTY"


@dataclass(frozen=True)
class Stage:
    """One stage of a job: its name on disk and in its table, and what a log line calls its results."""

    name: str
    description: str


class DamagedWorkError(ValueError):
    """A file of the work folder is not what this library writes (cut off, emptied, edited by hand)."""

    def __init__(self, path: Path, problem: str):
        self.problem = f"{path} {problem}"
        super().__init__(
            f"{self.problem}, so it is not finished work; delete {path} and rerun with the same settings: only that "
            "shard is redone (from that stage on); the other finished shards are kept"
        )


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def read_jsonl(path: Path, ids: list[str] | None = None, noun: str = "inputs") -> list[dict[str, Any]] | None:
    """The records of a JSONL shard file, or ``None`` when it does not exist (the stage is still to do).

    The library writes these files whole (atomically) with one record per input of the shard, in order, so a file
    that does not parse, or (given the shard's ``ids``) holds other records, was damaged after the fact:
    :class:`DamagedWorkError` names it and how to redo just that shard.
    """
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedWorkError(path, f"is not UTF-8 text ({exc})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DamagedWorkError(
                path, f"is damaged: line {number} is not valid JSON ({exc.msg} at column {exc.colno}: cut off?)"
            ) from None
    if ids is not None:
        found = [record.get("id") if isinstance(record, dict) else None for record in records]
        if found != ids:
            what = "is empty (0 bytes)" if not text else f"holds {len(records)} records"
            raise DamagedWorkError(
                path, f"{what}, but its shard has {len(ids)} {noun}, one record each (cut off, or another run's)"
            )
    return records


class WorkDir:
    """The resumable state of one run of a job: settings, and one file (or folder) per shard and stage.

    ``command`` (``ssb-trl prepare``) and ``stages`` (in order, the last one ``rows``) are the job's, so every
    message names the job that was run.
    """

    def __init__(self, output_dir: str | Path, command: str, stages: tuple[Stage, ...], noun: str = "inputs"):
        if stages[-1].name != ROWS_STAGE:
            raise ValueError(f"a job's last stage must be {ROWS_STAGE!r}, got {stages[-1].name!r}")
        self.output_dir = Path(output_dir)
        self.command, self.stages, self.noun = command, stages, noun
        self.stage_names = tuple(stage.name for stage in stages)
        self.root = self.output_dir / WORK_DIRNAME
        self.settings_path = self.root / SETTINGS_FILENAME
        self.done_path = self.root / "DONE"
        self.lock = RunLock(self.root, self.output_dir, command)

    def describe(self, stage: str) -> str:
        return next(s.description for s in self.stages if s.name == stage)

    def shard_path(self, stage: str, shard: int) -> Path:
        suffix = "" if stage == ROWS_STAGE else ".jsonl"
        return self.root / stage / f"shard-{shard:05d}{suffix}"

    def read_settings(self) -> dict[str, Any] | None:
        if not self.settings_path.is_file():
            return None
        try:
            return json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{self.settings_path} is unreadable ({exc}); delete {self.root} to start this output_dir afresh"
            ) from exc

    def write_settings(self, settings: dict[str, Any]) -> None:
        write_text(self.settings_path, json.dumps(settings, indent=2, sort_keys=True))

    def finished_shards(self, stage: str) -> list[int]:
        """Shards whose ``stage`` file is on disk (temporary files of interrupted writes start with a dot)."""
        folder = self.root / stage
        if not folder.is_dir():
            return []
        return sorted(
            int(path.name.split("-")[1].split(".")[0])
            for path in folder.glob("shard-*")
            if not path.name.startswith(".")
        )

    def read_shard(self, stage: str, shard: int, ids: list[str]) -> list[dict[str, Any]] | None:
        """A shard's records of a JSONL stage, checked to be one per input; None: to do."""
        return read_jsonl(self.shard_path(stage, shard), ids, self.noun)

    def write_shard(self, stage: str, shard: int, records: list[dict[str, Any]]) -> None:
        write_jsonl(self.shard_path(stage, shard), records)

    def check_shards(self, shard_ids: list[list[str]]) -> None:
        """Before any work: every finished shard file of this run is whole (else name each damaged one and the fix).

        Finding a damaged file now, rather than when its shard comes up or at the end, costs one read of the
        JSONL files and saves a run that would fail after hours.
        """
        damaged = []
        for shard, ids in enumerate(shard_ids):
            for stage in self.stage_names[:-1]:
                try:
                    self.read_shard(stage, shard, ids)
                except DamagedWorkError as exc:
                    damaged.append(exc.problem)
            rows = self.shard_path(ROWS_STAGE, shard)
            if rows.is_dir() and not (rows / EMPTY_MARKER).exists():
                problem = _saved_dataset_problem(rows)
                if problem:
                    damaged.append(f"{rows} {problem}")
        if damaged:
            listing = "\n  ".join(damaged)
            raise ValueError(
                f"{len(damaged)} finished shard file(s) in {self.root} are damaged:\n  {listing}\nDelete them and "
                "rerun with the same settings: only those shards are redone (from that stage on); the other "
                "finished shards are kept"
            )

    def remove(self, stage: str, shard: int) -> None:
        path = self.shard_path(stage, shard)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def check_usable(self) -> None:
        """A new run may start here: the folder is new, empty, or holds a run (refuse a folder of other files)."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {str(self.output_dir)!r} is a file; pass a folder (new or empty)")
        if self.settings_path.is_file() or not self.output_dir.exists():
            return
        finished = sum(len(self.finished_shards(stage)) for stage in self.stage_names)
        if finished:
            raise ValueError(
                f"{self.settings_path} is missing, but {self.root} holds {finished} finished shard files of an "
                "earlier run: without its settings they cannot be checked against this run's, so they are not "
                f"reused. Delete {self.root} to start afresh in this folder, or choose another --output_dir (or "
                "restore settings.json, if it was deleted by mistake, and rerun with the settings it records)"
            )
        if any(path.name != WORK_DIRNAME for path in self.output_dir.iterdir()):
            raise ValueError(
                f"output_dir {str(self.output_dir)!r} is not empty and holds no `{self.command}` run; choose an "
                "empty or new --output_dir"
            )

    def save_rows(self, shard: int, rows: datasets.Dataset) -> None:
        """Persist a shard's rows; an empty shard gets a marker (datasets cannot load an empty saved dataset)."""
        with atomic_path(self.shard_path(ROWS_STAGE, shard), directory=True) as tmp:
            if len(rows):
                rows.save_to_disk(str(tmp))
            else:
                (tmp / EMPTY_MARKER).write_text("")

    def load_rows(self, shard: int) -> datasets.Dataset | None:
        """A shard's rows, or None for a shard that kept none."""
        path = self.shard_path(ROWS_STAGE, shard)
        if (path / EMPTY_MARKER).exists():
            return None
        try:
            return datasets.load_from_disk(str(path))
        except (FileNotFoundError, OSError, ValueError) as exc:  # a file of the saved dataset deleted or cut off
            raise DamagedWorkError(path, f"cannot be loaded ({type(exc).__name__}: {exc})") from None

    def publish(self, staging: Path) -> None:
        """Move a saved dataset from ``staging`` into ``output_dir``; the files loaders look for go last."""
        last = ("state.json", "dataset_info.json")
        for old in [*self.output_dir.glob("data-*.arrow"), *(self.output_dir / name for name in last)]:
            old.unlink(missing_ok=True)
        files = sorted(
            staging.iterdir(), key=lambda path: (path.name in last, last.index(path.name) if path.name in last else 0)
        )
        for path in files:
            os.replace(path, self.output_dir / path.name)
        staging.rmdir()


def _saved_dataset_problem(folder: Path) -> str | None:
    """Why a shard's saved rows cannot be loaded (a file deleted or emptied by hand), or None when they are whole."""
    state = folder / "state.json"
    if not (folder / "dataset_info.json").is_file() or not state.is_file():
        return "holds no saved dataset (emptied by hand?)"
    try:
        files = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable state.json"
    missing = [name for name in files if not (folder / name).is_file()]
    return f"lacks its data file(s) {missing}" if missing else None
