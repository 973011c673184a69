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

import numpy as np
import torch

__all__ = ["as_matrix", "check_int", "check_positive"]


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


def as_matrix(w: object, name: str, nonfinite: str) -> torch.Tensor:
    """Check that ``w`` is a finite, non-empty 2-D matrix; return a detached float64 CPU copy.

    Args:
        w: a ``torch.Tensor`` or ``numpy.ndarray`` ``(rows, cols)`` of real numbers.
        name: the argument's name, for the message.
        nonfinite: what NaN or inf breaks, for the message (e.g. "its SVD is undefined").
    """
    if isinstance(w, torch.Tensor):
        if w.layout != torch.strided or w.is_complex():
            raise TypeError(f"{name} must be a dense real tensor, got layout={w.layout}, "
                            f"dtype={w.dtype}; use {name}.to_dense() or {name}.real")
        t = w.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(w, np.ndarray):
        if w.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {w.dtype}")
        t = torch.from_numpy(w.astype(np.float64))
    else:
        raise TypeError(f"{name} must be a 2-D torch.Tensor or numpy.ndarray, got "
                        f"{type(w).__name__}; pass e.g. layer.weight, not the layer or a list")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (rows, columns), got shape "
                         f"{tuple(t.shape)}; reshape it or pick one matrix")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs at least one row "
                         "and one column")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf; {nonfinite} "
                         "(check the training run that produced it)")
    return t
