"""Checks of the values a user hands the package: type, range and finiteness, one helper each.

Every config (``TrainConfig``, ``GroundingTrainConfig``, the learner configs, the pipeline's
settings), the env's keyword arguments and the evaluator call these, so a bad value gets the same
kind of message everywhere: ``"<name> <value!r> must be ..."``.

What is accepted: Python and numpy integers where an integer is asked for (never ``bool``, never a
float such as ``1.5`` or ``2.0``); Python and numpy integers and floats where a number is asked for
(never ``bool``, never a string). Numbers must be finite unless the check says otherwise.

A value of the wrong type raises :class:`InvalidTypeError`, which is both a ``TypeError`` and a
``ValueError`` (as numpy's ``AxisError`` is both a ``ValueError`` and an ``IndexError``), so code that
catches bad settings as ``ValueError`` keeps working; a value out of range raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np


MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy seeding and most RL libraries take 32-bit seeds, and every offset
the package adds to one (episode ``i`` of a run seeded ``s`` resets with ``s + i`` plus a fixed
offset below 10**7) stays far below torch's 64-bit limit."""
MAX_COUNT = 1_000_000
"""Largest count of episodes, rollouts or goals, and largest batch: a million 50-step episodes of
10-number states already fill 2 GB, and the KALM paper's largest dataset holds 100,000 episodes.
A larger value is refused at once instead of exhausting memory (or time) later."""


class InvalidTypeError(TypeError, ValueError):
    """A value of the wrong type; the message names the value, its type and what was expected."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float | np.floating)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int``; it must be a Python or numpy integer in ``[low, high]``."""
    if not _is_int(value):
        raise InvalidTypeError(f"{name} {_describe(value)} must be an integer")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        raise ValueError(f"{name} {number} must be an integer {bounds}")
    return number


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as an ``int`` seed in ``[0, MAX_SEED]``."""
    return check_int(value, name, 0, MAX_SEED)


def check_count(value: Any, name: str, low: int = 1) -> int:
    """``value`` as an ``int`` count or batch size in ``[low, MAX_COUNT]``."""
    return check_int(value, name, low, MAX_COUNT)


def check_float(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float``: a finite number (``finite=False`` also lets ``inf`` through, never
    NaN) in the interval from ``low`` to ``high``, each end closed unless ``low_open`` / ``high_open``."""
    if not _is_number(value):
        raise InvalidTypeError(f"{name} {_describe(value)} must be a number")
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ValueError(f"{name} {number} must be a finite number")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low}"
        right = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} {number} must lie in {interval}")
    return number


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared by equality, strings case-sensitively)."""
    if isinstance(value, str | int | type(None)) and not isinstance(value, bool) and value in choices:
        return value
    raise ValueError(f"{name} {value!r} is not one of {list(choices)}")


def check_str(value: Any, name: str) -> str:
    """``value`` if it is a non-empty ``str`` (not only whitespace)."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name} {_describe(value)} must be a str")
    if not value.strip():
        raise ValueError(f"{name} {value!r} must not be empty")
    return value


def check_path(value: Any, name: str) -> str:
    """``value`` as a str: a non-empty ``str`` or ``Path`` (a dataset id, a file or a folder)."""
    if not isinstance(value, str | Path):
        raise InvalidTypeError(f"{name} {_describe(value)} must be a str or Path")
    if not str(value).strip():
        raise ValueError(f"{name} {str(value)!r} must not be empty")
    return str(value)


def check_paths(value: Any, name: str, allow_empty: bool = False) -> list[str]:
    """``value`` as a list of str: a list or tuple of :func:`check_path` items (dataset ids or
    folders). A bare str is refused (it would be read as its characters)."""
    if isinstance(value, str | bytes | Path) or not isinstance(value, Sequence):
        raise InvalidTypeError(f"{name} {_describe(value)} must be a list of dataset ids or folders")
    items = [check_path(item, f"{name} item") for item in value]
    if not items and not allow_empty:
        raise ValueError(f"{name} {list(value)!r} must name at least one dataset")
    return items


def check_numbers(value: Any, name: str) -> np.ndarray:
    """``value`` as a numpy array of integers or floats; ``InvalidTypeError`` naming it otherwise
    (strings, booleans, ``None`` or ragged nesting are never read as numbers). Shape and range are
    the caller's to check."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        array = np.asarray(None)
    if array.dtype.kind not in "iuf":
        raise InvalidTypeError(f"{name} {value!r} must hold numbers, not {array.dtype} values")
    return array
