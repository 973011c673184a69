"""Save and load only the adapter: the LoRA tensors are a tiny fraction of a full checkpoint."""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch
from torch import nn

from .inject import _require_lora

__all__ = ["lora_state_dict", "load_lora_state_dict", "checkpoint_bytes"]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return only the LoRA tensors, keyed like ``model.state_dict()``.

    Keys are ``"<module path>.lora_A"`` (shape ``(r, in)``) and ``"<module path>.lora_B"``
    (shape ``(out, r)``). Values are detached *copies*, so training on afterwards does not
    change a saved adapter (handy for keeping several adapters in memory).
    """
    state = {}
    for name, layer in _require_lora(model):
        prefix = f"{name}." if name else ""
        state[prefix + "lora_A"] = layer.lora_A.detach().clone()  # (r, in)
        state[prefix + "lora_B"] = layer.lora_B.detach().clone()  # (out, r)
    return state


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy an adapter saved by ``lora_state_dict`` into ``model`` (strict).

    Missing keys, unexpected keys and wrong shapes raise a ``ValueError`` naming them, and the
    model is left unchanged. Loading into merged layers is refused (unmerge first), because their
    weights already contain the old update.
    """
    layers = dict(_require_lora(model))
    params = {}
    for name, layer in layers.items():
        prefix = f"{name}." if name else ""
        params[prefix + "lora_A"] = layer.lora_A
        params[prefix + "lora_B"] = layer.lora_B
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing}, "
                         f"unexpected {unexpected}; was it saved from a model with the same "
                         "target_modules?")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.shape != params[key].shape:
            raise ValueError(f"shape mismatch for {key!r}: the adapter has "
                             f"{tuple(value.shape)}, the model expects "
                             f"{tuple(params[key].shape)} (a different r?)")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"cannot load an adapter into merged layers {merged}; "
                         "call unmerge_lora(model) first")
    with torch.no_grad():
        for key, value in state_dict.items():
            params[key].copy_(value)


def checkpoint_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Return the size in bytes of ``torch.save(state_dict)``: what a checkpoint file takes."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getbuffer().nbytes
