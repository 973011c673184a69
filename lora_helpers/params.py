"""Counting parameters: what is trained, what is stored, and the paper's LoRA count (§5.1)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ._checks import check_int

__all__ = ["count_parameters", "print_trainable_parameters", "lora_parameter_count"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts; shared parameters count once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Print PEFT's line, e.g. ``trainable params: 1,234 || all params: 5,678 || trainable%: 21.7320``."""
    trainable, total = count_parameters(model)
    percent = 100 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}")


def lora_parameter_count(shapes: Iterable[tuple[int, int]], r: int) -> int:
    """Number of LoRA parameters for weight matrices of the given ``(out, in)`` shapes.

    Each adapted ``(out, in)`` matrix gets ``B: (out, r)`` and ``A: (r, in)``, i.e.
    ``r · (out + in)`` parameters; for ``L̂`` square ``d_model × d_model`` matrices this is the
    paper's ``|Θ| = 2 · L̂ · d_model · r`` (§5.1). Example: GPT-3 175B, r=1 on Wq and Wv in 96
    layers of 12288×12288 → 4,718,592 ("4.7M", Table 4).
    """
    r = check_int(r, "r")
    shapes = list(shapes)
    if not shapes:
        raise ValueError("shapes is empty; pass a list of (out_features, in_features) pairs")
    total = 0
    for shape in shapes:
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise ValueError(f"each shape must be an (out_features, in_features) pair, got {shape!r}")
        out_f = check_int(shape[0], "out_features")
        in_f = check_int(shape[1], "in_features")
        if r > min(out_f, in_f):
            raise ValueError(f"r={r} exceeds min{tuple(shape)} = {min(out_f, in_f)}; "
                             "a rank-r update needs r <= min(out_features, in_features)")
        total += r * (out_f + in_f)
    return total
