"""The constructor arguments every LoRA wrapper shares, checked once and the same way.

``LoRAEmbedding``, ``LoRAConv1d``/``LoRAConv2d``, ``LoRAFusedLinear`` and
``LoRAMultiheadAttention`` take ``LoRALinear``'s vocabulary (``r``, ``lora_alpha``,
``lora_dropout``, ``use_rslora``, ``init_lora_weights``); ``check_lora_args`` refuses a bad value
with the same messages and returns the scaling (paper §4.1: ``alpha / r``; rsLoRA:
``alpha / sqrt(r)``).
"""

from __future__ import annotations

import math
import numbers

from torch import nn

from ._checks import check_int

__all__ = ["check_lora_args", "dropout_module"]


def check_lora_args(r: object, lora_alpha: object, lora_dropout: object, use_rslora: object,
                    init_lora_weights: object, max_rank: int, where: str,
                    allow_rank_above: bool = False) -> tuple[int, float]:
    """Check the shared arguments; return ``(r, scaling)``.

    Args:
        max_rank: the largest rank the update can have (``min`` of the reshaped weight's sides).
        where: what the rank is bounded by, for the message (e.g. ``"min(c_out, c_in·k²)"``).
        allow_rank_above: accept ``r > max_rank`` (PEFT does; the extra rank only costs memory).
    """
    r = check_int(r, "r")
    if r > max_rank and not allow_rank_above:
        raise ValueError(f"r={r} exceeds {where} = {max_rank}: the update has rank at most "
                         f"{max_rank}, so a larger r only adds parameters; use r <= {max_rank}")
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, numbers.Real):
        raise TypeError(f"lora_alpha must be a positive number, got {lora_alpha!r}")
    if not (math.isfinite(lora_alpha) and lora_alpha > 0):
        raise ValueError(f"lora_alpha must be a finite number > 0, got {lora_alpha}; "
                         "a common choice is lora_alpha = r (scaling 1)")
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, numbers.Real):
        raise TypeError(f"lora_dropout must be a float in [0, 1), got {lora_dropout!r}")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}; use 0.0 for no dropout")
    if not isinstance(use_rslora, bool):
        raise TypeError(f"use_rslora must be True or False, got {use_rslora!r}")
    if init_lora_weights is not True and init_lora_weights is not False:
        raise ValueError(f"init_lora_weights must be True (the default init) or False (A and B "
                         f"both random, for tests), got {init_lora_weights!r}")
    return r, lora_alpha / (math.sqrt(r) if use_rslora else r)


def dropout_module(p: float) -> nn.Module:
    """``nn.Dropout(p)`` for ``p > 0``, else ``nn.Identity()`` (as PEFT)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
