"""One run per work folder: a lock file that names the run holding it.

Why not ``filelock`` (an OS lock, released when its process dies): on the network filesystems that clusters share
between hosts (NFS), ``flock`` is not reliable across hosts, and it records nobody, so a refused user would not
learn which run holds the folder. This lock is a file created atomically (``os.link``) that records the process id,
host, start time and command; a lock left by a process that is gone (same host) is taken over with a warning, and a
lock from another host, which cannot be checked from here, is refused with how to clear it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILENAME = "LOCK"


class RunLock:
    """The lock of one work folder (``<root>/LOCK``), taken by the main process of a run for the whole run."""

    def __init__(self, root: Path, output_dir: Path, command: str):
        self.root, self.output_dir, self.command = root, output_dir, command
        self.path = root / LOCK_FILENAME

    def acquire(self) -> None:
        """Claim the folder for this run, or say which run holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        mine = _lock_record()
        for _ in range(3):
            fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.root)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(json.dumps(mine, indent=2))
                os.link(tmp, self.path)  # atomic: fails if a lock exists, never leaves a half-written one
                return
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            holder = self._read()
            if holder is not None and holder.get("pid") == mine["pid"] and holder.get("host") == mine["host"]:
                return  # this very process holds it (an earlier call that raised in a notebook, say)
            if holder is not None and not _is_stale(holder):
                raise RuntimeError(
                    f"output_dir {str(self.output_dir)!r} is in use by another `{self.command}` run: "
                    f"{_describe(holder)}. Two runs in one folder would repeat or discard each other's work: wait for "
                    "it to finish, or use another --output_dir. If no such run is alive any more (it ran on another "
                    f"machine), delete {self.path} and rerun."
                )
            logger.warning(
                "%s: taking over the lock of a run that is gone (%s)",
                self.output_dir,
                _describe(holder) if holder else f"unreadable {self.path}",
            )
            self.path.unlink(missing_ok=True)
        raise RuntimeError(f"could not take the lock {self.path}: other runs keep taking it; rerun")

    def release(self) -> None:
        """Drop this run's lock (only its own: a lock taken over meanwhile stays)."""
        holder = self._read()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()  # a run refused before it recorded anything leaves no folder behind

    def _read(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None


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


def _is_stale(holder: dict[str, Any]) -> bool:
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


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, command: "
        f"{holder.get('command')}"
    )
