"""LoRA+ (Hayou et al. 2024, arXiv 2402.12354): a larger learning rate for B than for A.

In ``ΔW = s·B A``, ``B: (out, r)`` starts at zero and ``A: (r, in)`` at random; the paper's §3
shows that, as the width grows, one learning rate for both is inefficient and that B should get
``λ`` times A's (``λ = loraplus_lr_ratio``, PEFT's example value 16).

``create_loraplus_optimizer`` builds the parameter groups the way PEFT 0.21's
``peft.optimizers.create_loraplus_optimizer`` builds them, so a model trained here and one
trained with PEFT see the same learning rates:

====================  ==================================================  ======================
group                 which trainable parameters                          learning rate
====================  ==================================================  ======================
A                     everything else (``lora_A``, a trainable 2-D head)  ``lr``
embedding             LoRA on embedding layers (none in this package)     ``loraplus_lr_embedding``
B                     ``lora_B`` and every 1-D parameter (DoRA's          ``lr · ratio``
                      magnitude, biases, LayerNorm weights) ...
B, no decay           ... of those, biases and LayerNorm parameters       ``lr · ratio``, no decay
====================  ==================================================  ======================

Note that 1-D parameters such as DoRA's ``lora_magnitude_vector`` and biases get B's (larger)
learning rate. PEFT gives every group the weight decay ``loraplus_weight_decay`` (default 0.0)
except "B, no decay"; an ordinary ``weight_decay=`` would be overridden by the groups, so it is
refused here with a pointer to ``loraplus_weight_decay``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ._checks import check_positive
from .training import FOREACH

__all__ = ["create_loraplus_optimizer", "loraplus_parameter_groups"]


def _decayed_names(model: nn.Module) -> set[str]:
    """Parameter names outside any ``nn.LayerNorm`` whose name does not contain "bias".

    This is what PEFT computes with ``transformers.trainer_pt_utils.get_parameter_names(model,
    [nn.LayerNorm])`` followed by ``"bias" not in name``.
    """
    in_norm = {f"{m_name}.{p_name}" if m_name else p_name
               for m_name, module in model.named_modules() if isinstance(module, nn.LayerNorm)
               for p_name, _ in module.named_parameters()}
    return {name for name, _ in model.named_parameters()
            if name not in in_norm and "bias" not in name}


def loraplus_parameter_groups(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """Sort the trainable parameters into LoRA+'s groups (see the module docstring).

    Returns:
        ``{"groupA": {...}, "embedding": {...}, "groupB": {...}, "groupB_no_decay": {...}}``,
        each mapping parameter names to parameters (PEFT's group names).
    """
    decayed = _decayed_names(model)
    groups: dict[str, dict[str, nn.Parameter]] = {
        "groupA": {}, "embedding": {}, "groupB": {}, "groupB_no_decay": {}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_B" in name or param.ndim == 1:
            groups["groupB" if name in decayed else "groupB_no_decay"][name] = param
        else:
            groups["groupA"][name] = param
    return groups


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: type[torch.optim.Optimizer],
                              lr: float, loraplus_lr_ratio: float = 16,
                              **optimizer_kwargs: Any) -> torch.optim.Optimizer:
    """An optimizer whose learning rate for ``lora_B`` (and 1-D parameters) is ``ratio × lr``.

    Args:
        model: a model with LoRA layers (``apply_lora``); only parameters that require grad are
            optimized.
        optimizer_cls: e.g. ``torch.optim.AdamW``.
        lr: the learning rate of A (group "groupA").
        loraplus_lr_ratio: ``λ = lr_B / lr_A``, > 0 (the paper and PEFT suggest λ ≥ 1).
        optimizer_kwargs: passed to ``optimizer_cls``, except PEFT's two LoRA+ options
            ``loraplus_weight_decay`` (default 0.0) and ``loraplus_lr_embedding`` (default 1e-6).
            Unless given, ``foreach=True`` for an optimizer that takes it (the same numbers as
            torch's default, faster on the CPU: see ``training.FOREACH``).
    Returns:
        ``optimizer_cls`` with four parameter groups, in PEFT's order: A, embedding, B,
        B without weight decay (a group may be empty).
    """
    lr = check_positive(lr, "lr", "1e-3")
    ratio = check_positive(loraplus_lr_ratio, "loraplus_lr_ratio", "16")
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer class, got "
                        f"{optimizer_cls!r}; e.g. torch.optim.AdamW")
    if "weight_decay" in optimizer_kwargs:
        raise TypeError("create_loraplus_optimizer sets the weight decay per group; pass "
                        f"loraplus_weight_decay={optimizer_kwargs['weight_decay']!r} instead of "
                        "weight_decay= (PEFT would silently ignore weight_decay)")
    weight_decay = optimizer_kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = optimizer_kwargs.pop("loraplus_lr_embedding", 1e-6)
    groups = loraplus_parameter_groups(model)
    if not any(groups.values()):
        raise ValueError("the model has no trainable parameters; call apply_lora(model, ...) "
                         "first")
    param_groups = [
        {"params": list(groups["groupA"].values()), "weight_decay": weight_decay, "lr": lr},
        {"params": list(groups["embedding"].values()), "weight_decay": weight_decay,
         "lr": lr_embedding},
        {"params": list(groups["groupB"].values()), "weight_decay": weight_decay,
         "lr": lr * ratio},
        {"params": list(groups["groupB_no_decay"].values()), "weight_decay": 0.0,
         "lr": lr * ratio},
    ]
    if "foreach" in inspect.signature(optimizer_cls).parameters:
        optimizer_kwargs.setdefault("foreach", FOREACH)
    return optimizer_cls(param_groups, lr=lr, **optimizer_kwargs)
