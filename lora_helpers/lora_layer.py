"""``LoRALayer``: the small protocol every LoRA wrapper follows, so the core needs no type list.

``lora_layers``, ``mark_only_lora_as_trainable``, ``merge_lora``/``unmerge_lora``/``merge_and_unload``,
``disable_lora``, ``lora_state_dict``/``load_lora_state_dict`` and ``save_peft_adapter`` find LoRA
layers as instances of ``LoRALayer`` and use only what it promises:

- ``base``: the wrapped, frozen layer (``merge_and_unload`` puts it back in the model);
- ``merged``, ``disabled``: flags (``disable_lora`` sets ``disabled``);
- ``merge()``, ``unmerge()``; ``delta_weights()``: every update the layer would add, as a tuple
  (``merge_lora`` checks them all for NaN/inf before changing any weight);
- ``lora_parameter_names``: the names of the layer's own trainable tensors (what is trained and
  what an adapter checkpoint holds);
- ``peft_tensor_names``: our tensor name → PEFT's key suffix in ``adapter_model.safetensors``;
  ``peft_problem()``: ``None``, or why PEFT's format cannot hold this layer.

A new layer type subclasses ``LoRALayer`` and registers its builder in
``lora_helpers.inject.LORA_WRAPPERS`` (see ``embedding``, ``conv``, ``attention``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LoRALayer"]


class LoRALayer(nn.Module):
    """Base class of the LoRA wrappers (``LoRALinear``, ``LoRAEmbedding``, ``LoRAConv2d``, ...)."""

    lora_parameter_names: tuple[str, ...] = ("lora_A", "lora_B")
    peft_tensor_names: dict[str, str] = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}
    use_dora = False
    init_lora_weights: bool | str = True

    def delta_weights(self) -> tuple[torch.Tensor, ...]:
        """Every update the layer adds when merged (one for most layers)."""
        return (self.delta_weight(),)

    def peft_problem(self) -> str | None:
        """``None`` if ``save_peft_adapter`` can write this layer, else the reason it cannot."""
        return None
