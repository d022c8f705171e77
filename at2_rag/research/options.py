"""Checks of the research entry points' options, so a useless value fails at once with one line, not
hours later with a ZeroDivisionError or a folder of empty shards."""

from __future__ import annotations

import math
import numbers
import operator

from ..errors import InputError


def at_least(name: str, value: object, minimum: int = 1, why: str = "") -> int:
    """``value`` as an int when it is a whole number ≥ ``minimum`` (never a bool); else InputError."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise InputError(f"{name} must be at least {minimum}{why} (a whole number), got {value!r}")
    return number


def optional_limit(limit: object) -> int | None:
    """``limit``: None (every example) or a whole number ≥ 1."""
    return None if limit is None else at_least("limit", limit, 1, " (or None for every example)")


def open_fraction(name: str, value: object) -> float:
    """``value`` when it is a number strictly between 0 and 1 (a keep probability); else InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise InputError(f"{name} must lie strictly between 0 and 1 (a keep probability), got {value!r}")
    return float(value)


def finite_number(name: str, value: object, minimum: float = 0.0, *, above: bool = False, why: str = "") -> float:
    """``value`` as a float when it is a finite real number ≥ ``minimum`` (> with ``above``), never a bool;
    else InputError (an optimiser would raise its own ValueError, or silently compute NaN, later)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if above else value < minimum):  # type: ignore[operator]
        bound = f"above {minimum:g}" if above else f"at least {minimum:g}"
        raise InputError(f"{name} must be a finite number {bound}{why}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def mask_count(n_masks: object) -> int:
    """``n_masks``: at least 2, since a correlation across masks needs two."""
    return at_least("n_masks", n_masks, 2, " (a correlation across masks needs two)")


ESTIMATOR_KINDS = ("answer", "query", "support")
"""Estimators ``fit-model`` makes: ``answer`` (the model's answer rows; citations, draft pruning),
``query`` (question rows against the model's own answer) and ``support`` (question rows against
reference answers; what pruning uses by default)."""


def estimator_kinds(kinds: object) -> tuple[str, ...]:
    """``kinds`` as a tuple of distinct names among :data:`ESTIMATOR_KINDS`, at least one; else InputError."""
    got = (kinds,) if isinstance(kinds, str) else tuple(kinds)  # type: ignore[arg-type]
    if not got or len(set(got)) != len(got) or any(k not in ESTIMATOR_KINDS for k in got):
        shown = ", ".join(map(str, got)) or "none"
        raise InputError(f"kinds must be distinct names among {', '.join(ESTIMATOR_KINDS)}, got {shown}")
    return got


__all__ = [
    "ESTIMATOR_KINDS", "at_least", "estimator_kinds", "finite_number", "mask_count", "open_fraction", "optional_limit",
]
