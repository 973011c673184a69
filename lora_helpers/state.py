"""Save and load only the adapter: the LoRA tensors are a tiny fraction of a full checkpoint."""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch
from torch import nn

from .inject import BIAS_MODES, require_lora

__all__ = ["lora_state_dict", "load_lora_state_dict", "checkpoint_bytes"]


def _adapter_parameters(model: nn.Module, bias: str) -> dict[str, nn.Parameter]:
    """The parameters an adapter file holds, keyed like ``model.state_dict()``.

    ``"<path>.<name>"`` for each of the layer's ``lora_parameter_names``: ``lora_A`` and
    ``lora_B``; for DoRA layers also ``lora_magnitude_vector`` (PEFT's name); for embeddings
    ``lora_embedding_A``/``lora_embedding_B``; with ``bias="lora_only"`` also the biases
    of the adapted layers (``"<path>.base.bias"``); with ``bias="all"`` every bias in the model
    (loralib's modes, matching ``mark_only_lora_as_trainable``).
    """
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    params = {}
    for name, layer in require_lora(model):
        prefix = f"{name}." if name else ""
        for pname in layer.lora_parameter_names:  # lora_A (r, in), lora_B (out, r), DoRA's m, ...
            params[prefix + pname] = getattr(layer, pname)
        if bias == "lora_only" and getattr(layer.base, "bias", None) is not None:
            params[prefix + "base.bias"] = layer.base.bias  # (out,)
    if bias == "all":
        params.update((n, p) for n, p in model.named_parameters()
                      if n == "bias" or n.endswith(".bias"))
    return params


def lora_state_dict(model: nn.Module, bias: str = "none") -> dict[str, torch.Tensor]:
    """Return only the adapter's tensors, keyed like ``model.state_dict()``.

    Keys are ``"<module path>.lora_A"`` (shape ``(r, in)``) and ``"<module path>.lora_B"``
    (shape ``(out, r)``), DoRA's ``"<module path>.lora_magnitude_vector"`` (shape ``(out,)``),
    plus biases if you trained them (``bias="lora_only"`` or ``"all"``, as
    in ``mark_only_lora_as_trainable``). Values are detached *copies*, so training on afterwards
    does not change a saved adapter (handy for keeping several adapters in memory).
    """
    return {key: p.detach().clone() for key, p in _adapter_parameters(model, bias).items()}


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                         bias: str = "none") -> None:
    """Copy an adapter saved by ``lora_state_dict(model, bias)`` into ``model`` (strict).

    Missing keys, unexpected keys and wrong shapes raise a ``ValueError`` naming them, and the
    model is left unchanged. Loading into merged layers is refused (unmerge first), because their
    weights already contain the old update.
    """
    params = _adapter_parameters(model, bias)
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    magnitude = "lora_magnitude_vector"
    if any(k.endswith(magnitude) for k in unexpected):
        raise ValueError(f"this is a DoRA adapter (it has {[k for k in unexpected if k.endswith(magnitude)]}) "
                         "but the model's LoRA layers are plain LoRA; apply_lora(model, ..., "
                         "use_dora=True) before loading it")
    if missing and all(k.endswith(magnitude) for k in missing):
        raise ValueError(f"the model's layers use DoRA but the adapter has no {missing}: it is a "
                         "plain LoRA adapter; load it into a model built with use_dora=False")
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing}, "
                         f"unexpected {unexpected}; was it saved from a model with the same "
                         f"target_modules and bias={bias!r}?")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.shape != params[key].shape:
            raise ValueError(f"shape mismatch for {key!r}: the adapter has "
                             f"{tuple(value.shape)}, the model expects "
                             f"{tuple(params[key].shape)} (a different r?)")
    merged = [name for name, layer in require_lora(model) if layer.merged]
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
