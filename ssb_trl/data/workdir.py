"""The on-disk state of a resumable data-preparation run: settings, one file per shard and stage, the result.

Every write goes through :func:`ssb_trl.storage.atomic_path`, so after a crash a file either holds complete
results or does not exist, and a rerun never takes half-written work for finished work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets

from ssb_trl.storage import atomic_path, write_text

WORK_DIRNAME = "ssb_work"
EMPTY_MARKER = "EMPTY"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def read_jsonl(path: Path) -> list[dict[str, Any]] | None:
    """The records of a JSONL file, or ``None`` when it does not exist (the stage is still to do)."""
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class WorkDir:
    """The resumable state of one run: settings, and one file (or directory) per shard and stage."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / WORK_DIRNAME
        self.settings_path = self.root / "settings.json"
        self.done_path = self.root / "DONE"

    def shard_path(self, stage: str, shard: int) -> Path:
        suffix = "" if stage == "rows" else ".jsonl"
        return self.root / stage / f"shard-{shard:05d}{suffix}"

    def claim(self, settings: dict[str, Any]) -> bool:
        """Record ``settings`` for a new run or check them against an existing one; True when resuming."""
        if self.settings_path.is_file():
            recorded = json.loads(self.settings_path.read_text())
            if recorded != settings:
                diffs = _describe_differences(recorded, settings)
                raise ValueError(
                    f"output_dir {str(self.output_dir)!r} holds a run with different settings ({diffs}). "
                    "Rerun with the same settings to resume it, or choose another --output_dir "
                    "(or delete that directory) to start afresh."
                )
            return True
        if self.output_dir.exists() and any(self.output_dir.iterdir()):
            raise ValueError(
                f"output_dir {str(self.output_dir)!r} is not empty and holds no SSB data-preparation run; "
                "choose an empty or new --output_dir"
            )
        write_text(self.settings_path, json.dumps(settings, indent=2, sort_keys=True))
        return False

    def save_rows(self, shard: int, rows: datasets.Dataset) -> None:
        """Persist a shard's rows; an empty shard gets a marker (datasets cannot load an empty saved dataset)."""
        with atomic_path(self.shard_path("rows", shard), directory=True) as tmp:
            if len(rows):
                rows.save_to_disk(str(tmp))
            else:
                (tmp / EMPTY_MARKER).write_text("")

    def load_rows(self, shard: int) -> datasets.Dataset | None:
        """A shard's rows, or None for a shard that kept none."""
        path = self.shard_path("rows", shard)
        return None if (path / EMPTY_MARKER).exists() else datasets.load_from_disk(str(path))

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


def _describe_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    diffs = [
        f"{key}: {old_cfg.get(key)!r} -> {new_cfg.get(key)!r}"
        for key in sorted(set(old_cfg) | set(new_cfg))
        if old_cfg.get(key) != new_cfg.get(key)
    ]
    for key in sorted((set(old) | set(new)) - {"config"}):
        if old.get(key) != new.get(key):
            diffs.append(
                f"{key} changed" if key == "questions_sha256" else f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
            )
    return "; ".join(diffs) or "unknown difference"
