"""Checks every settings dataclass of ssb-trl runs on itself: numbers are real numbers of the declared kind.

NaN slips through every range check (``nan <= 0`` is False), so a setting such as ``temperature=nan`` would
otherwise train NaN weights or sample garbage and exit 0. A YAML ``num_rollouts: 2.5`` reaches an ``int``
field as a float (argparse converts command-line strings, not YAML values), passes ``>= 2`` and fails later
naming no setting, or is silently used (``max_new_tokens: 16.9``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


def require_valid_numbers(settings: Any, allow_infinite: tuple[str, ...] = ()) -> None:
    """Both checks below: integer fields hold integers, float fields finite numbers (call from ``__post_init__``)."""
    require_integers(settings)
    require_finite_numbers(settings, allow_infinite)


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


def require_integers(settings: Any) -> None:
    """Raise ``ValueError`` naming every ``int`` field of the dataclass ``settings`` that holds a non-integer.

    A float with no fractional part (``3.0``, as YAML or JSON may write it) is accepted and stored as ``3``, so
    the code downstream gets a real ``int``; ``2.5``, ``True`` or ``"3"`` are refused.
    """
    bad = []
    for name in integer_fields(type(settings)):
        value = getattr(settings, name)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            continue
        if isinstance(value, float) and value.is_integer():
            object.__setattr__(settings, name, int(value))  # object.__setattr__: also frozen dataclasses
            continue
        bad.append(f"{name}={value!r}")
    if bad:
        raise ValueError(
            f"{type(settings).__name__}: these settings take whole numbers, got {', '.join(bad)}. "
            "Pass an integer (check the YAML/CLI value)."
        )


@functools.cache  # a class's annotations do not change; Sampling is built often
def integer_fields(settings_class: type) -> tuple[str, ...]:
    """The fields declared ``int`` or ``int | None`` (not ``int | str``: those take other values too)."""
    try:
        hints = typing.get_type_hints(settings_class)
    except Exception:  # an annotation that does not resolve here: read the annotations as written
        hints = {f.name: f.type for f in dataclasses.fields(settings_class)}
    return tuple(f.name for f in dataclasses.fields(settings_class) if _is_integer_type(hints.get(f.name, f.type)))


def _is_integer_type(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.replace(" ", "") in ("int", "int|None", "None|int", "Optional[int]", "typing.Optional[int]")
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arg for arg in typing.get_args(annotation) if arg is not type(None)] == [int]
    return False
