"""The on-disk state of a resumable data-preparation run, written so that nothing half-written is read.

Files are written to a temporary name in the same directory, flushed, and renamed into place
(``os.replace`` is atomic on POSIX), so after a crash a file either holds complete results or does not
exist.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

WORK_DIRNAME = "ssb_work"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a flushed temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_atomic(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


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
        write_atomic(self.settings_path, json.dumps(settings, indent=2, sort_keys=True))
        return False


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
