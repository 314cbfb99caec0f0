"""Checks every settings dataclass of ssb-trl runs on itself: no NaN or infinity reaches training or generation.

NaN slips through every range check (``nan <= 0`` is False), so a setting such as ``temperature=nan`` would
otherwise train NaN weights or sample garbage and exit 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def require_finite_numbers(settings: Any, allow_infinite: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming every float field of the dataclass ``settings`` that is NaN or infinite."""
    bad = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            if math.isinf(value) and f.name in allow_infinite:
                continue
            bad.append(f"{f.name}={value}")
    if bad:
        raise ValueError(
            f"{type(settings).__name__}: settings must be finite numbers, got {', '.join(bad)}. "
            "Pass a real number (check the YAML/CLI value)."
        )
