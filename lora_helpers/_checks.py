"""The integer-argument check every module uses, so that a bad int is refused the same way.

A value that is not a whole number (a float such as ``2.0``, a bool, a string) raises a
``TypeError``; a whole number out of range raises a ``ValueError``. Both messages name the
argument, the value, and what to pass instead.
"""

from __future__ import annotations

import numbers

__all__ = ["check_int"]


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
