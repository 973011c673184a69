"""The argument checks every module uses, so that a bad value is refused the same way.

``check_int``: a value that is not a whole number (a float such as ``2.0``, a bool, a string)
raises a ``TypeError``; a whole number out of range raises a ``ValueError``.
``check_positive``: a value that is not a real number (``None``, a bool, a string) raises a
``TypeError``; zero, a negative number, NaN or infinity raises a ``ValueError``.
``as_matrix``: a finite, non-empty 2-D matrix as a float64 copy. ``check_lora_arguments``: every
argument of ``LoRALinear``, checked before the layer touches its base.
Every message names the argument, the value, and what to pass instead.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

__all__ = ["as_matrix", "check_int", "check_positive", "check_lora_arguments"]

_INITS = (True, False, "gaussian", "pissa")  # LoRALinear's init_lora_weights


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


def check_lora_arguments(base: nn.Module, r: object, lora_alpha: object, lora_dropout: object,
                         use_rslora: object, init_lora_weights: object, use_dora: bool,
                         allow_rank_above_features: bool) -> int:
    """Refuse bad ``LoRALinear`` arguments with a clear error; return ``r`` as an int.

    ``base`` must be an ``nn.Linear`` or declare ``lora_base_kind = nn.Linear`` (QLoRA's
    ``NF4Linear``); PiSSA needs a writable weight (``mergeable`` not False); a meta-device base
    has no values to start from.
    """
    if hasattr(base, "lora_A"):
        raise ValueError("this layer already has LoRA (base is a LoRALinear); "
                         "adapt the plain nn.Linear once, or use its .base")
    if not (isinstance(base, nn.Linear) or getattr(base, "lora_base_kind", None) is nn.Linear):
        raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}; LoRALinear "
                        "wraps linear layers only (nn.Linear, or QLoRA's NF4Linear)")
    r = check_int(r, "r")
    smaller = min(base.in_features, base.out_features)
    if r > smaller and not allow_rank_above_features:
        raise ValueError(
            f"r={r} exceeds min(in_features, out_features) = min({base.in_features}, "
            f"{base.out_features}); a rank-r update needs r <= {smaller} (PEFT accepts a larger "
            "r: pass allow_rank_above_features=True to do the same)")
    check_positive(lora_alpha, "lora_alpha", "8 (a common choice is lora_alpha = r: scaling 1)")
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, numbers.Real):
        raise TypeError(f"lora_dropout must be a float in [0, 1), got {lora_dropout!r}")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}; use 0.0 for no dropout")
    for flag, value in (("use_rslora", use_rslora), ("use_dora", use_dora)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if not any(init_lora_weights is v or (isinstance(v, str) and init_lora_weights == v) for v in _INITS):
        raise ValueError(f"init_lora_weights must be True, False, 'gaussian' or 'pissa', "
                         f"got {init_lora_weights!r}")
    if not getattr(base, "mergeable", True) and init_lora_weights == "pissa":
        raise ValueError(f"init_lora_weights='pissa' writes the residual W0 - s·BA into the base "
                         f"weight, but the base ({type(base).__name__}) has a read-only weight. "
                         "For QPiSSA, initialise PiSSA on the nn.Linear first and quantize its "
                         "residual base.weight afterwards (notebook 08)")
    device = getattr(base, "device", None) or base.weight.device
    if torch.device(device).type == "meta":
        raise ValueError("the base layer is on the meta device (its weight has a shape but no "
                         "values), so A, B and any PiSSA/DoRA statistics cannot be computed; "
                         "materialise it first, e.g. model.to_empty(device='cpu') and load the "
                         "pretrained weights, then apply LoRA")
    return r
