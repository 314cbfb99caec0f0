"""The on-disk state of a resumable data-preparation run: settings, one file per shard and stage, the result.

Every write goes through :func:`ssb_trl.storage.atomic_path`, so after a crash a file either holds complete
results or does not exist, and a rerun never takes half-written work for finished work.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets

from ssb_trl.data.config import QUESTION_COUNT_FIELDS, RUNTIME_ONLY_FIELDS, STAGES, stage_of
from ssb_trl.models import resolve_model_path
from ssb_trl.storage import SETTINGS_FILENAME, WORK_DIRNAME, atomic_path, write_text

logger = logging.getLogger(__name__)

EMPTY_MARKER = "EMPTY"
LOCK_FILENAME = "LOCK"
# Settings compared by what they point to (recorded as settings["source"] and settings["model"]), not as typed.
IDENTITY_FIELDS = frozenset({"source", "model_name_or_path", "tokenizer_name_or_path"})


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


def read_jsonl(path: Path, ids: list[str] | None = None) -> list[dict[str, Any]] | None:
    """The records of a JSONL shard file, or ``None`` when it does not exist (the stage is still to do).

    The library writes these files whole (atomically) with one record per question of the shard, in order, so
    a file that does not parse, or (given the shard's question ``ids``) holds other records, was damaged
    after the fact: :class:`DamagedWorkError` names it and how to redo just that shard.
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
                path, f"{what}, but its shard has {len(ids)} questions, one record each (cut off, or another run's)"
            )
    return records


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

    def read_shard(self, stage: str, shard: int, ids: list[str]) -> list[dict[str, Any]] | None:
        """A shard's records of a JSONL stage (rollouts, teacher, hint_check), checked to be one per question; None: to do."""
        return read_jsonl(self.shard_path(stage, shard), ids)

    def check_shards(self, shard_ids: list[list[str]]) -> None:
        """Before any work: every finished shard file of this run is whole (else name each damaged one and the fix).

        Finding a damaged file now, rather than when its shard comes up or at the end, costs one read of the
        JSONL files and saves a run that would fail after hours.
        """
        damaged = []
        for shard, ids in enumerate(shard_ids):
            for stage in ("rollouts", "teacher", "hint_check"):
                try:
                    self.read_shard(stage, shard, ids)
                except DamagedWorkError as exc:
                    damaged.append(exc.problem)
            rows = self.shard_path("rows", shard)
            if rows.is_dir() and not any((rows / name).exists() for name in (EMPTY_MARKER, "dataset_info.json")):
                damaged.append(f"{rows} holds no saved dataset (emptied by hand?)")
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
        finished = sum(len(self.finished_shards(stage)) for stage in STAGES)
        if finished:
            raise ValueError(
                f"{self.settings_path} is missing, but {self.root} holds {finished} finished shard files of an "
                "earlier run: without its settings they cannot be checked against this run's, so they are not "
                f"reused. Delete {self.root} to start afresh in this folder, or choose another --output_dir (or "
                "restore settings.json, if it was deleted by mistake, and rerun with the settings it records)"
            )
        if any(path.name != WORK_DIRNAME for path in self.output_dir.iterdir()):
            raise ValueError(
                f"output_dir {str(self.output_dir)!r} is not empty and holds no SSB data-preparation run; "
                "choose an empty or new --output_dir"
            )

    # ---------------------------------------------------------------------------------------------- the lock

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILENAME

    def acquire_lock(self) -> None:
        """Claim the folder for this run (the main process of a launch), or say which run holds it.

        Two runs in one folder would redo each other's shards or drop each other's files. The lock records the
        process id, host, start time and command; a lock left by a process that is gone (same host) is taken
        over with a warning. A lock from another host cannot be checked and is refused, saying how to clear it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        mine = _lock_record()
        for _ in range(3):
            fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.root)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(json.dumps(mine, indent=2))
                os.link(tmp, self.lock_path)  # atomic: fails if a lock exists, never leaves a half-written one
                return
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            holder = self._read_lock()
            if holder is not None and holder.get("pid") == mine["pid"] and holder.get("host") == mine["host"]:
                return  # this very process holds it (an earlier call that raised in a notebook, say)
            if holder is not None and not _lock_is_stale(holder):
                raise RuntimeError(
                    f"output_dir {str(self.output_dir)!r} is in use by another data-preparation run: "
                    f"{_describe_lock(holder)}. Two runs in one folder would repeat or discard each other's work: "
                    "wait for it to finish, or use another --output_dir. If no such run is alive any more (it ran on "
                    f"another machine), delete {self.lock_path} and rerun."
                )
            logger.warning(
                "%s: taking over the lock of a run that is gone (%s)",
                self.output_dir,
                _describe_lock(holder) if holder else f"unreadable {self.lock_path}",
            )
            self.lock_path.unlink(missing_ok=True)
        raise RuntimeError(f"could not take the lock {self.lock_path}: other runs keep taking it; rerun")

    def release_lock(self) -> None:
        """Drop this run's lock (only its own: a lock taken over meanwhile stays)."""
        holder = self._read_lock()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()  # a run refused before it recorded anything leaves no folder behind

    def _read_lock(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def claim(
        self, settings: dict[str, Any], defaults: dict[str, Any] | None = None, legacy_questions_sha256: str = ""
    ) -> list[str]:
        """Record ``settings`` for a new run, or reconcile them with the run already in this folder.

        Returns what was done, one line each (empty for a new run or an unchanged resume). A change of settings
        that feed only later stages (:data:`~ssb_trl.data.config.TEACHER_FIELDS`,
        :data:`~ssb_trl.data.config.ROWS_FIELDS`) drops the files of that stage and the ones after it, and keeps
        the earlier ones; a different number of questions, or a question source edited in place, keeps every
        shard whose questions are unchanged and drops the others (the notes list them). A change of what the
        rollouts depend on (source, model, seed, rollout sampling, ...) is refused while the folder holds finished
        work, since it would throw all of it away; the source, model and tokenizer are compared by what they are
        (``settings["source"]``, ``settings["model"]``: see :func:`_identity_changes`), not by how they were typed. ``defaults`` gives
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
            and key not in IDENTITY_FIELDS
            and old_cfg.get(key, defaults.get(key)) != new_cfg.get(key, defaults.get(key))
        }
        changed.update(_identity_changes(recorded, settings))
        old_digests, new_digests = _shard_digests(recorded), settings["questions"]["shard_sha256"]
        if old_digests is None and recorded.get("questions_sha256") == legacy_questions_sha256:
            old_digests = new_digests  # a run of an earlier version on the same questions
        if recorded.get("prompt_template_version") != settings.get("prompt_template_version"):
            changed["prompt_template_version"] = (
                recorded.get("prompt_template_version"),
                settings.get("prompt_template_version"),
            )
        # Shards whose questions differ: the last shard of either run (it was or is partly filled) when the number
        # of questions changed, any shard of a question file edited in place; all, for a run that kept no
        # per-shard digests (then they cannot be told apart, and the run is refused rather than redone).
        old_count, new_count = recorded.get("questions", {}).get("count"), settings["questions"]["count"]
        last = {len(old_digests) - 1, len(new_digests) - 1} if old_digests is not None else set()
        differing = (
            list(range(len(new_digests)))
            if old_digests is None
            else [i for i in range(min(len(old_digests), len(new_digests))) if old_digests[i] != new_digests[i]]
        )
        questions_changed = old_digests is None and bool(differing)
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
                "afresh. Teacher settings (teacher_*), soft-label settings (soft_label_mode, soft_label_top_k, "
                "soft_label_draws, soft_label_temperature, logprob_dtype) and num_questions may change between runs."
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
            partial = [i for i in stale if i in last] if old_count != new_count else []
            edited = [i for i in stale if i not in partial]
            kept = len([i for i in finished["rollouts"] if i < len(new_digests) and i not in stale])
            if old_count != new_count:
                notes.append(
                    f"num_questions changed ({old_count} -> {new_count} questions): keeping {kept} finished shards"
                    + (
                        f", redoing shard(s) {partial} (their questions changed: a partly filled last shard)"
                        if partial
                        else ""
                    )
                    + f"; {len(new_digests) - kept} of {len(new_digests)} shards to do"
                )
            if edited:
                notes.append(
                    f"the questions of shard(s) {edited} differ from the recorded run's (the question source was "
                    f"edited): redoing those shards from their rollouts on; keeping the {kept} other finished shards"
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


def _resolved(name: Any) -> Any:
    """What a model or file name typed by a user points to: the real path of a local one, else the name."""
    if not isinstance(name, str) or not name:
        return name
    try:
        path = Path(resolve_model_path(name) if name.startswith("bundled:") else name).expanduser()
    except (ImportError, OSError, ValueError):
        return name
    return str(path.resolve()) if path.exists() else name


def _existing_path(name: Any) -> str | None:
    """The resolved path of a local file or folder, else None (a Hub name, a reasoning-gym task)."""
    path = Path(name).expanduser() if isinstance(name, str) and name else None
    return str(path.resolve()) if path is not None and path.exists() else None


def _describe_model(identity: dict[str, Any]) -> str:
    revision = f" revision {identity['revision']}" if identity.get("revision") else ""
    return f"{identity.get('kind')} {identity.get('path')}{revision} (sha256 {str(identity.get('sha256'))[:12]})"


def _identity_changes(recorded: dict[str, Any], settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Changes of the source, model or tokenizer, judged by what they are, not how they were typed.

    A question source is the same when its resolved path or its content digest is (its edits are then found
    shard by shard); a model or tokenizer when its content fingerprint is. Runs recorded before these were kept
    are compared by the paths their names resolve to.
    """
    old_cfg, new_cfg = recorded.get("config", {}), settings["config"]
    changes: dict[str, tuple[Any, Any]] = {}
    old_source, new_source = recorded.get("source") or {}, settings.get("source") or {}
    old_path = old_source.get("path") if old_source else _existing_path(old_cfg.get("source"))
    same_source = (
        old_cfg.get("source") == new_cfg.get("source")
        if not old_path and not new_source.get("path")
        else old_path == new_source.get("path")
        or (old_source.get("sha256") is not None and old_source.get("sha256") == new_source.get("sha256"))
    )
    if not same_source:
        changes["source"] = (old_cfg.get("source"), new_cfg.get("source"))
    old_model, new_model = recorded.get("model") or {}, settings.get("model") or {}
    if old_model.get("sha256") and new_model.get("sha256"):
        if old_model["sha256"] != new_model["sha256"]:
            changes["model (weights and config, by content)"] = (
                _describe_model(old_model),
                _describe_model(new_model),
            )
        if old_model.get("tokenizer_sha256") != new_model.get("tokenizer_sha256"):
            changes["tokenizer (vocabulary, special tokens, chat template)"] = (
                str(old_model.get("tokenizer_sha256"))[:12],
                str(new_model.get("tokenizer_sha256"))[:12],
            )
    else:
        for key in ("model_name_or_path", "tokenizer_name_or_path"):
            if _resolved(old_cfg.get(key)) != _resolved(new_cfg.get(key)):
                changes[key] = (old_cfg.get(key), new_cfg.get(key))
    return changes


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), to tell it from a later one given its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _lock_record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "process_start": _process_start(os.getpid()),
    }


def _lock_is_stale(holder: dict[str, Any]) -> bool:
    """The lock's process is gone: same host, and no process with its pid (or one started at another time)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    started = _process_start(holder["pid"])
    return bool(holder.get("process_start") and started and started != holder["process_start"])


def _describe_lock(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, command: "
        f"{holder.get('command')}"
    )
