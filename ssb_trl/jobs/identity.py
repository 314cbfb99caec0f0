"""What a run's model, tokenizer and inputs are, by content, so a rerun on other ones is caught (one rule each).

A rerun compares these records with the ones its folder recorded: a model by a fingerprint of its config and
weights (:func:`ssb_trl.models.model_fingerprint`), a tokenizer by its vocabulary, special tokens and chat template,
a local input file or folder by its resolved path and content, and the inputs themselves shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ssb_trl.models import model_fingerprint, module_fingerprint, resolve_model_path
from ssb_trl.soft_labels.schema import tokenizer_fingerprint
from ssb_trl.storage import file_sha256

logger = logging.getLogger(__name__)


def tokenizer_digest(tokenizer: Any) -> str:
    """What of a tokenizer generated text and stored rows depend on: its vocabulary, bos/eos tokens, chat template."""
    record = {
        "vocabulary": tokenizer_fingerprint(tokenizer),
        "bos_eos": [tokenizer.bos_token, tokenizer.eos_token],
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def legacy_tokenizer_digest(tokenizer: Any) -> str:
    """The digest ``ssb-trl label`` recorded before the run engine (vocabulary and chat template, 16 hex digits):
    only to recognise the tokenizer of a work folder written then (:func:`ssb_trl.jobs.resume.upgrade_settings`)."""
    record = {"vocabulary": tokenizer_fingerprint(tokenizer), "chat_template": tokenizer.chat_template}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(name_or_path: str | None, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """A model (and its tokenizer) by content: a loaded ``model`` by its weights, else the files ``name_or_path``
    points to. When neither can be fingerprinted (a Hub model outside the cache layout, say), runs compare it by
    the name it resolves to: ``sha256`` is then None."""
    try:
        identity = module_fingerprint(model) if model is not None else model_fingerprint(name_or_path)
    except Exception as exc:  # any failure to read it: compare by name instead, and say so
        logger.warning("Cannot fingerprint model %s (%s); runs compare it by name", name_or_path, exc)
        identity = {"kind": "name", "path": name_or_path, "sha256": None}
    if tokenizer is not None:
        identity["tokenizer_sha256"] = tokenizer_digest(tokenizer)
    return identity


def local_input_identity(name: str | None) -> dict[str, Any]:
    """A local input file or folder: its resolved path and a digest of its content; None for anything else (a Hub
    id, a generated task). A folder's digest covers its visible files, each hashed once and cached."""
    path = Path(name or "").expanduser()
    if not name or not path.exists():
        return {"path": None, "sha256": None}
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": file_sha256(path)}
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            digest.update(f"{relative.as_posix()}\t{file_sha256(file)}\n".encode())
    return {"path": str(path.resolve()), "sha256": digest.hexdigest()}


def shard_digests(records: list[dict[str, Any]], shard_size: int) -> list[str]:
    """One digest per shard of what its inputs are (each a JSON-able record), so an edited input redoes only the
    shards it touched, and a run that grows keeps its finished shards."""
    digests = []
    for start in range(0, len(records), shard_size):
        digest = hashlib.sha256()
        for record in records[start : start + shard_size]:
            digest.update(json.dumps(record, sort_keys=True).encode())
        digests.append(digest.hexdigest())
    return digests


def resolved_name(name: Any) -> Any:
    """What a model or file name typed by a user points to: the real path of a local one, else the name."""
    if not isinstance(name, str) or not name:
        return name
    try:
        path = Path(resolve_model_path(name) if name.startswith("bundled:") else name).expanduser()
    except (ImportError, OSError, ValueError):
        return name
    return str(path.resolve()) if path.exists() else name


def describe_model(identity: dict[str, Any]) -> str:
    revision = f" revision {identity['revision']}" if identity.get("revision") else ""
    return f"{identity.get('kind')} {identity.get('path')}{revision} (sha256 {str(identity.get('sha256'))[:12]})"


def model_changes(name: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """How a model identity changed (empty: the same model). By content when both runs fingerprinted it, else by
    the path its name resolves to."""
    changes: dict[str, tuple[Any, Any]] = {}
    if old.get("sha256") and new.get("sha256"):
        if old["sha256"] != new["sha256"]:
            changes[f"{name} (weights and config, by content)"] = (describe_model(old), describe_model(new))
    elif resolved_name(old.get("path")) != resolved_name(new.get("path")):
        changes[name] = (old.get("path"), new.get("path"))
    if old.get("tokenizer_sha256") != new.get("tokenizer_sha256"):
        tokenizer = "tokenizer" if name == "model" else f"{name}'s tokenizer"
        changes[f"{tokenizer} (vocabulary, special tokens, chat template)"] = (
            str(old.get("tokenizer_sha256"))[:12],
            str(new.get("tokenizer_sha256"))[:12],
        )
    return changes


def input_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Another input, not the same one edited: neither its resolved path nor its content is the recorded one's.
    (Edits in place are found shard by shard.) Inputs that are not local files compare by their typed names."""
    if not old.get("path") and not new.get("path"):
        return old.get("name") != new.get("name")
    same_path = old.get("path") == new.get("path")
    same_content = old.get("sha256") is not None and old.get("sha256") == new.get("sha256")
    return not (same_path or same_content)
