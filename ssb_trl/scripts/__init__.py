"""The recipes as importable modules, shaped like TRL's scripts: each has ``make_parser()`` and ``main(...)``.

They run as ``ssb-trl prepare|train|evaluate`` (console script), ``python -m ssb_trl.scripts.<name>``, or
``accelerate launch -m ssb_trl.scripts.<name>``; ``recipes/*.py`` in a clone are thin shims over them.
"""

from __future__ import annotations

import logging


def configure_logging() -> None:
    """INFO logs with timestamps, minus the HTTP clients' chatter (what every recipe shows a user)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
