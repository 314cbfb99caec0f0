"""Renamed flags and values: the old names keep working for one release, each with a one-line warning.

The one table of renames. ``FLAG_RENAMES[command]`` maps an old flag of ``ssb-trl COMMAND`` (which is also its
``--config`` YAML key) to the new one; ``VALUE_RENAMES[flag]`` maps old values of a flag to new ones, for every
command that has the flag. Every way of running a recipe applies them (``ssb_trl.cli`` parses through
:func:`rename_args` and :func:`rename_config`), before the parser sees the names, so the rest of the code only
knows the new ones. To rename a flag, add a line here and rename the dataclass field; nothing else.

The warning is one line on stderr, ``ssb-trl COMMAND: warning: ...``, shown once per old name, by the process the
user started: not again by the processes ``accelerate launch`` starts for it, nor by ranks other than 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from ssb_trl.errors import ERROR_FILE_ENV

REMOVED_IN = "0.3"
"""The release in which the old names below stop working."""

_SOURCE = {  # the question source of prepare and evaluate took TRL's dataset names
    "source": "dataset_name",
    "source_config_name": "dataset_config",
    "source_split": "dataset_split",
}
_SERVER = {"vllm_server_url": "vllm_server_base_url"}  # TRL's name for the vLLM server's address
FLAG_RENAMES: dict[str, dict[str, str]] = {  # command -> {old flag: new flag}, without the leading --
    "prepare": {**_SOURCE, **_SERVER},
    "label": {
        **_SERVER,
        # The teacher writes missing completions: its sampling is teacher_*, as in prepare.
        "generation_temperature": "teacher_temperature",
        "generation_top_k": "teacher_top_k",
        "generation_top_p": "teacher_top_p",
        "max_new_tokens": "teacher_max_new_tokens",
    },
    "train": {},
    "evaluate": {**_SOURCE, **_SERVER},
    "inspect": {"split": "dataset_split"},
}
FLAG_ALIASES: dict[str, dict[str, str]] = {  # command -> {TRL's name: ours}: accepted silently, not deprecated
    "prepare": {"dataset_train_split": "dataset_split"},
    "label": {"dataset_train_split": "dataset_split"},
    "evaluate": {"dataset_test_split": "dataset_split"},
}
"""Each command reads one split; TRL's scripts name it for its role (training data, test data)."""
VALUE_RENAMES: dict[str, dict[str, str]] = {  # flag -> {old value: new value}, in every command that has the flag
    # ssb-trl's shipped accelerate configs, renamed to the names TRL ships (`trl <cmd> --accelerate_config NAME`).
    "accelerate_config": {
        "ddp": "multi_gpu",
        "deepspeed_zero2": "zero2",
        "deepspeed_zero3": "zero3",
        "deepspeed_zero3_offload": "zero3_offload",
    },
}


def _warn(prog: str, message: str) -> None:
    launched_by_ssb_trl = bool(os.environ.get(ERROR_FILE_ENV))  # the command that launched us has warned
    if launched_by_ssb_trl or os.environ.get("RANK", "0") != "0":
        return
    print(f"{prog}: warning: {message}; the old name stops working in {REMOVED_IN}", file=sys.stderr, flush=True)


def _renamed_value(flag: str, value: Any, prog: str, where: str) -> Any:
    new = VALUE_RENAMES.get(flag, {}).get(value) if isinstance(value, str) else None
    if new is None:
        return value
    _warn(prog, f"{where} {value} is renamed {where} {new}")
    return new


def rename_args(command: str, args: list[str], prog: str) -> list[str]:
    """`args` with old flags (``--old v``, ``--old=v``) and old values of renamed values replaced by the new ones.

    Raises ValueError when a flag is given under both its old and its new name.
    """
    flags = FLAG_RENAMES.get(command, {})
    aliases = FLAG_ALIASES.get(command, {})
    out: list[str] = []
    given: dict[str, str] = {}  # new flag -> how it was written
    pending_value_of: str | None = None
    for arg in args:
        if pending_value_of is not None:
            out.append(_renamed_value(pending_value_of, arg, prog, f"--{pending_value_of}"))
            pending_value_of = None
            continue
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, equals, value = arg[2:].partition("=")
        new = flags.get(name)
        if new is not None:
            _warn(prog, f"--{name} is renamed --{new}")
        new = new or aliases.get(name) or name
        if new in given and given[new] != name:
            raise ValueError(f"--{given[new]} and --{name} are the same setting (--{new}): pass it once, as --{new}")
        given[new] = name
        if equals:
            out.append(f"--{new}={_renamed_value(new, value, prog, f'--{new}')}")
        else:
            out.append(f"--{new}")
            pending_value_of = new if new in VALUE_RENAMES else None
    return out


def rename_config(command: str, config: Mapping[str, Any], prog: str) -> dict[str, Any]:
    """A ``--config`` YAML mapping with old keys and old values of renamed values replaced by the new ones.

    Raises ValueError when a setting is given under both its old and its new key.
    """
    flags = FLAG_RENAMES.get(command, {})
    aliases = FLAG_ALIASES.get(command, {})
    out: dict[str, Any] = {}
    for key, value in config.items():
        new = flags.get(key, key)
        if new == key and key in aliases:
            new = aliases[key]
            if new in config:
                raise ValueError(f"the YAML sets both {key!r} and {new!r}, the same setting: keep {new!r}")
        elif new != key:
            if new in config:
                raise ValueError(f"the YAML sets both {key!r} and {new!r}, the same setting: keep {new!r}")
            _warn(prog, f"the YAML key {key!r} is renamed {new!r}")
        out[new] = _renamed_value(new, value, prog, f"{new}:")
    return out


def renamed_settings(command: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings (a work folder's ``settings.json`` config) under today's names, silently: a run recorded
    before a rename resumes as the same run."""
    flags = FLAG_RENAMES.get(command, {})
    return {flags.get(key, key): value for key, value in settings.items()}
