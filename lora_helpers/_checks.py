"""The argument checks every module uses, so that a bad value is refused the same way.

``check_int``: a value that is not a whole number (a float such as ``2.0``, a bool, a string)
raises a ``TypeError``; a whole number out of range raises a ``ValueError``.
``check_positive``: a value that is not a real number (``None``, a bool, a string) raises a
``TypeError``; zero, a negative number, NaN or infinity raises a ``ValueError``.
Every message names the argument, the value, and what to pass instead.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_int", "check_positive"]


def check_int(value: object, name: str, low: int = 1, high: int | None = None, why: str = "") -> int:
    """Return ``value`` as an ``int`` if it is an integer with ``low <= value <= high``.

    Args:
        value: the argument to check; Python and numpy integers pass, bools do not.
        name: the argument's name, for the message (e.g. ``"r"``).
        low: the smallest allowed value.
        high: the largest allowed value, or ``None`` for no upper bound.
        why: the reason for the range, appended to the ``ValueError`` message.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is outside ``[low, high]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        whole = isinstance(value, float) and value.is_integer() and low <= value
        example = int(value) if whole else low
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}); "
                        f"pass a whole number, e.g. {name}={example}")
    if value < low or (high is not None and value > high):
        need = f"{name} >= {low}" if high is None else f"{low} <= {name} <= {high}"
        raise ValueError(f"{name}={value} is out of range: need {need}" + (f" ({why})" if why else ""))
    return int(value)


def check_positive(value: object, name: str, example: str) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number > 0.

    Args:
        value: the argument to check; Python, numpy and 0-d torch numbers pass, bools do not.
        name: the argument's name, for the message (e.g. ``"lr"``).
        example: a good value to suggest, e.g. ``"1e-3"``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is not finite or not > 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} "
                        f"({type(value).__name__}); pass e.g. {name}={example}")
    if not (math.isfinite(value) and value > 0):  # NaN fails both
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; pass e.g. {name}={example}")
    return float(value)
