"""The on-disk state of a resumable data-preparation run: settings, one file per shard and stage, the result.

Every write goes through :func:`ssb_trl.storage.atomic_path`, so after a crash a file either holds complete
results or does not exist, and a rerun never takes half-written work for finished work.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import datasets

from ssb_trl.data.config import QUESTION_COUNT_FIELDS, RUNTIME_ONLY_FIELDS, STAGES, stage_of
from ssb_trl.storage import SETTINGS_FILENAME, WORK_DIRNAME, atomic_path, write_text

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
        self.settings_path = self.root / SETTINGS_FILENAME
        self.done_path = self.root / "DONE"

    def shard_path(self, stage: str, shard: int) -> Path:
        suffix = "" if stage == "rows" else ".jsonl"
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
        if not self.settings_path.is_file() and self.output_dir.exists() and any(self.output_dir.iterdir()):
            raise ValueError(
                f"output_dir {str(self.output_dir)!r} is not empty and holds no SSB data-preparation run; "
                "choose an empty or new --output_dir"
            )

    def claim(
        self, settings: dict[str, Any], defaults: dict[str, Any] | None = None, legacy_questions_sha256: str = ""
    ) -> list[str]:
        """Record ``settings`` for a new run, or reconcile them with the run already in this folder.

        Returns what was done, one line each (empty for a new run or an unchanged resume). A change of settings
        that feed only later stages (:data:`~ssb_trl.data.config.TEACHER_FIELDS`,
        :data:`~ssb_trl.data.config.ROWS_FIELDS`) drops the files of that stage and the ones after it, and keeps
        the earlier ones; a different number of questions keeps every shard whose questions are unchanged and
        drops the others. A change of what the rollouts depend on (source, model, seed, rollout sampling, ...)
        is refused while the folder holds finished work, since it would throw all of it away. ``defaults`` gives
        the value a setting had when a run recorded before that setting existed; ``legacy_questions_sha256`` is
        the questions' digest as runs recorded it before they kept one per shard.
        """
        recorded = self.read_settings()
        if recorded is None:
            self.check_usable()
            write_text(self.settings_path, json.dumps(settings, indent=2, sort_keys=True))
            return []
        if recorded == settings:
            return []
        defaults = defaults or {}
        old_cfg, new_cfg = recorded.get("config", {}), settings["config"]
        changed = {
            key: (old_cfg.get(key, defaults.get(key)), new_cfg.get(key, defaults.get(key)))
            for key in sorted(set(old_cfg) | set(new_cfg))
            if key not in QUESTION_COUNT_FIELDS
            and key not in RUNTIME_ONLY_FIELDS  # e.g. the engine, recorded by runs of earlier versions
            and old_cfg.get(key, defaults.get(key)) != new_cfg.get(key, defaults.get(key))
        }
        old_digests, new_digests = _shard_digests(recorded), settings["questions"]["shard_sha256"]
        if old_digests is None and recorded.get("questions_sha256") == legacy_questions_sha256:
            old_digests = new_digests  # a run of an earlier version on the same questions
        if recorded.get("prompt_template_version") != settings.get("prompt_template_version"):
            changed["prompt_template_version"] = (
                recorded.get("prompt_template_version"),
                settings.get("prompt_template_version"),
            )
        # Shards whose questions differ; only the last shard of either run may (it was or is partly filled).
        last = {len(old_digests) - 1, len(new_digests) - 1} if old_digests is not None else set()
        differing = (
            list(range(len(new_digests)))
            if old_digests is None
            else [i for i in range(min(len(old_digests), len(new_digests))) if old_digests[i] != new_digests[i]]
        )
        questions_changed = any(i not in last for i in differing)
        first_stage = min((STAGES.index(stage_of(key)) for key in changed), default=len(STAGES))
        finished = {stage: self.finished_shards(stage) for stage in STAGES}
        if (first_stage == 0 or questions_changed) and any(finished.values()):
            reasons = _describe(changed) + (
                ["the questions differ from the recorded run's"] if questions_changed else []
            )
            raise ValueError(
                f"output_dir {str(self.output_dir)!r} holds a run with different settings "
                f"({'; '.join(reasons)}). These determine the rollouts, the first stage, so the "
                f"finished work ({len(finished['rollouts'])} shards of rollouts) cannot be reused. Rerun with the "
                "recorded settings to resume it, or choose another --output_dir (or delete that directory) to start "
                "afresh. Teacher settings (teacher_*), soft-label settings (soft_label_top_k, "
                "soft_label_temperature, logprob_dtype) and num_questions may change between runs."
            )
        notes = []
        if first_stage == 0 or questions_changed:
            notes.append(
                f"the folder held no finished work; starting afresh with the new settings ({'; '.join(_describe(changed)) or 'other questions'})"
            )
            for stage in STAGES:
                for shard in finished[stage]:
                    self.remove(stage, shard)
        else:
            if first_stage < len(STAGES):
                redone = STAGES[first_stage:]
                reused = STAGES[:first_stage]
                count = {stage: sum(1 for shard in finished[stage] if shard < len(new_digests)) for stage in reused}
                notes.append(
                    f"settings changed ({'; '.join(_describe(changed))}): reusing the finished "
                    + ", ".join(f"{stage} ({count[stage]} shards)" for stage in reused)
                    + "; redoing "
                    + ", ".join(STAGE_NAMES[stage] for stage in redone)
                )
                for stage in redone:
                    for shard in finished[stage]:
                        self.remove(stage, shard)
            stale = [i for i in differing if any(i in finished[stage] for stage in STAGES)]
            for shard in stale:
                for stage in STAGES:
                    self.remove(stage, shard)
            old_count = recorded.get("questions", {}).get("count")
            new_count = settings["questions"]["count"]
            if old_count != new_count:
                kept = len([i for i in finished["rollouts"] if i < len(new_digests) and i not in stale])
                notes.append(
                    f"num_questions changed ({old_count} -> {new_count} questions): keeping {kept} finished shards"
                    + (
                        f", redoing shard(s) {stale} (their questions changed: a partly filled last shard)"
                        if stale
                        else ""
                    )
                    + f"; {len(new_digests) - kept} of {len(new_digests)} shards to do"
                )
        # Keep the digests of shards beyond this run's last, so a later run that grows again can trust their files.
        if old_digests is not None and len(old_digests) > len(new_digests):
            settings = {
                **settings,
                "questions": {**settings["questions"], "shard_sha256": new_digests + old_digests[len(new_digests) :]},
            }
        write_text(self.settings_path, json.dumps(settings, indent=2, sort_keys=True))
        return notes

    def check_claimed(self, settings: dict[str, Any]) -> None:
        """For a non-main process: the main process recorded these settings (else the processes disagree)."""
        recorded = self.read_settings() or {}
        if (
            recorded.get("config") != settings["config"]
            or recorded.get("questions", {}).get("count") != settings["questions"]["count"]
        ):
            raise RuntimeError(
                f"this process's settings differ from those the main process recorded in {self.settings_path}; "
                "launch every process with the same settings"
            )

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


STAGE_NAMES = {
    "rollouts": "rollouts",
    "teacher": "teacher answers",
    "hint_check": "hint check (unhinted answers)",
    "rows": "soft-label rows",
}


def _shard_digests(recorded: dict[str, Any]) -> list[str] | None:
    """Per-shard question digests of a recorded run; None for a run recorded before they were kept."""
    questions = recorded.get("questions")
    return list(questions["shard_sha256"]) if isinstance(questions, dict) and "shard_sha256" in questions else None


def _describe(changed: dict[str, tuple[Any, Any]]) -> list[str]:
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items()]
