"""What every recipe shares: its logging, and how its flags are parsed and its errors shown (one line each).

Every way of running a recipe goes through :func:`run_script` (``ssb-trl evaluate``, ``python -m
ssb_trl.scripts.X``, the ``recipes/`` shims, the processes ``accelerate launch`` starts).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssb_trl.deprecations import rename_args, rename_config
from ssb_trl.errors import reported_errors
from ssb_trl.validation import require_integers

# Nothing heavy at import time: `ssb-trl --help` answers without loading torch, transformers or accelerate.
COMMANDS = {  # command -> (module in ssb_trl.scripts, help)
    "prepare": ("prepare", "Prepare a soft-label dataset (rollouts, hinted teacher, top-K soft labels); resumable"),
    "label": (
        "label",
        "Label a prompt/completion dataset with any teacher's top-K soft labels (offline distillation); resumable",
    ),
    "train": ("train", "Train with SSBTrainer on a soft-label dataset"),
    "evaluate": (
        "evaluate",
        "Evaluate models side by side: pass@1, mean@n with 95%% intervals",
    ),  # argparse %-formats help
    "inspect": ("inspect_data", "Inspect a soft-label dataset: size, K, T, top-K mass, bytes, one decoded row"),
}


def configure_logging() -> None:
    """INFO logs with timestamps, minus the HTTP clients' chatter (what every recipe shows a user)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _rename_config_keys(parser: Any, command: str) -> None:
    """Rename the old keys of the ``--config`` YAML (``ssb_trl.deprecations``) as ``parser`` reads it.

    TrlParser reads the YAML inside ``parse_args_and_config`` and hands its keys to ``set_defaults_with_config``,
    which has no hook: this parser (made for this one run) gets a wrapper of its own at that one place.
    """
    set_defaults = parser.set_defaults_with_config

    def set_defaults_with_config(**config: Any) -> list[str]:
        return set_defaults(**rename_config(command, config, parser.prog))

    parser.set_defaults_with_config = set_defaults_with_config


def parse_settings(parser: Any, args: list[str], command: str | None, **kwargs: Any) -> tuple[list[str], tuple]:
    """The flags with old names renamed, and the parsed dataclasses (and remaining strings, if asked); a bad value
    is one line naming the setting."""
    with reported_errors(parser.prog, while_parsing=True):
        if command is not None:
            args = rename_args(command, args, parser.prog)
            _rename_config_keys(parser, command)
        parsed = parser.parse_args_and_config(args, **kwargs)
        for settings in parsed:  # also the dataclasses that are not ssb-trl's (ModelConfig: lora_r: 2.5)
            if dataclasses.is_dataclass(settings):
                require_integers(settings)
    return args, parsed


def command_of(main: Callable[..., Any]) -> str | None:
    """The ``ssb-trl`` command whose script defines ``main`` (also when run as a file, as accelerate runs it)."""
    code = getattr(main, "__code__", None)
    if code is None:  # not a recipe's main (a builtin, a callable object): no command, so no renames
        return None
    module = Path(code.co_filename).stem
    return next((command for command, (name, _) in COMMANDS.items() if name == module), None)


def run_script(main: Callable[..., Any], parser: Any, args: list[str] | None = None) -> Any:
    """Parse the flags and ``--config`` YAML with ``parser`` (a ``TrlParser``), then ``main(*settings)``.

    Every way of running a recipe goes through here (``ssb-trl evaluate``, ``python -m ssb_trl.scripts.X``, the
    ``recipes/`` shims, the processes ``accelerate launch`` starts), so each shows ssb-trl's own errors as one
    line and exits 1 (``ssb_trl.errors``).
    """
    _, parsed = parse_settings(parser, list(sys.argv[1:] if args is None else args), command_of(main))
    with reported_errors(parser.prog):
        return main(*parsed)
