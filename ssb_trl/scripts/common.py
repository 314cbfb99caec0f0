"""What every recipe shares: its logging, and how its flags are parsed and its errors shown (one line each).

Every way of running a recipe goes through :func:`run_script` (``ssb-trl evaluate``, ``python -m
ssb_trl.scripts.X``, the ``recipes/`` shims, the processes ``accelerate launch`` starts).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ssb_trl.errors import reported_errors
from ssb_trl.validation import require_integers


def configure_logging() -> None:
    """INFO logs with timestamps, minus the HTTP clients' chatter (what every recipe shows a user)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_settings(parser: Any, args: list[str] | None, **kwargs: Any) -> tuple:
    """The parsed dataclasses (and remaining strings, if asked); a bad value is one line naming the setting."""
    with reported_errors(parser.prog, while_parsing=True):
        parsed = parser.parse_args_and_config(args, **kwargs)
        for settings in parsed:  # also the dataclasses that are not ssb-trl's (ModelConfig: lora_r: 2.5)
            if dataclasses.is_dataclass(settings):
                require_integers(settings)
    return parsed


def run_script(main: Callable[..., Any], parser: Any, args: list[str] | None = None) -> Any:
    """Parse the flags and ``--config`` YAML with ``parser`` (a ``TrlParser``), then ``main(*settings)``.

    Every way of running a recipe goes through here (``ssb-trl evaluate``, ``python -m ssb_trl.scripts.X``, the
    ``recipes/`` shims, the processes ``accelerate launch`` starts), so each shows ssb-trl's own errors as one
    line and exits 1 (``ssb_trl.errors``).
    """
    parsed = parse_settings(parser, args)
    with reported_errors(parser.prog):
        return main(*parsed)
