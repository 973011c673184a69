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

What every wrapper shares lives here once: ``weight``/``bias`` (the base's, read-only, as in
PEFT), ``merge()``/``unmerge()`` (``W0 ← W0 ± ΔW`` into ``merge_targets()``, refusing NaN/inf
and read-only bases) and the refusal to re-initialise a merged layer. A merged layer's extra
state-dict entries (``LoRALinear``'s ``lora_merged``) go through three hooks that do nothing here.

A new layer type subclasses ``LoRALayer`` and registers its builder in
``lora_helpers.inject.LORA_WRAPPERS`` (see ``embedding``, ``conv``, ``attention``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["LoRALayer", "is_mergeable"]


def is_mergeable(base: nn.Module) -> bool:
    """Whether ``base.weight`` can be written (merge, PiSSA); QLoRA's ``NF4Linear`` says it cannot."""
    return getattr(base, "mergeable", True)


class LoRALayer(nn.Module):
    """Base class of the LoRA wrappers (``LoRALinear``, ``LoRAEmbedding``, ``LoRAConv2d``, ...).

    A subclass calls ``super().__init__()`` (which starts the layer unmerged and enabled), sets
    ``base`` and defines ``delta_weight()`` (or ``delta_weights()`` for several) and ``forward``.
    """

    lora_parameter_names: tuple[str, ...] = ("lora_A", "lora_B")
    peft_tensor_names: dict[str, str] = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}
    use_dora = False
    init_lora_weights: bool | str = True

    def __init__(self) -> None:
        super().__init__()
        self.merged = False  # is ΔW inside the base's weight? (merge(), unmerge())
        self.disabled = False  # set by lora_helpers.disable_lora: forward is base(x) alone

    @property
    def weight(self) -> torch.Tensor:
        """``base.weight`` (read-only; PEFT's layers have it), e.g. ``(out_features, in_features)``."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """``base.bias``, e.g. ``(out_features,)``, or None (read-only)."""
        return self.base.bias

    def delta_weights(self) -> tuple[torch.Tensor, ...]:
        """Every update the layer adds when merged (one for most layers)."""
        return (self.delta_weight(),)

    def merge_targets(self) -> tuple[torch.Tensor, ...]:
        """The base tensors ``delta_weights()`` are added into, in the same order and layout."""
        return (self.base.weight,)

    def peft_problem(self) -> str | None:
        """``None`` if ``save_peft_adapter`` can write this layer, else the reason it cannot."""
        return None

    def _check_not_merged(self) -> None:
        """Refuse to re-initialise A and B while ``ΔW`` is inside the base's weight."""
        if self.merged:
            raise ValueError("cannot re-initialise a merged layer (its update is inside "
                             "base.weight); call unmerge() first")

    def _check_can_merge(self) -> None:
        if not is_mergeable(self.base):  # e.g. NF4Linear: see lora_helpers.quantization
            raise ValueError(f"refusing to merge into a {type(self.base).__name__} base: its weight "
                             "is read-only (W + ΔW is not representable in NF4, and re-quantizing "
                             "would add rounding error to the update). Keep the adapter unmerged "
                             "(QLoRA's way), or call lora_helpers.dequantize_model(model) first")

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``ΔW`` into the base's weight (``W0 ← W0 + ΔW``), so ``forward`` is just ``base(x)``.

        Merging twice warns and changes nothing (as PEFT). A non-finite ``ΔW`` is refused with a
        ``ValueError`` and the base is left untouched; so is a read-only base. The sum is formed
        in the update's dtype (fp32 for a LoRA layer on a half base) and written back.
        """
        if self.merged:
            warnings.warn(f"{type(self).__name__} is already merged; nothing to do", stacklevel=2)
            return
        self._check_can_merge()
        deltas = self.delta_weights()
        if not all(torch.isfinite(delta).all() for delta in deltas):
            raise ValueError("refusing to merge: the LoRA update contains NaN or inf "
                             "(check the learning rate / training); the base is untouched")
        for weight, delta in zip(self.merge_targets(), deltas):
            weight.copy_(weight.to(delta.dtype) + delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``ΔW`` from the base's weight again. Unmerging an unmerged layer warns."""
        if not self.merged:
            warnings.warn(f"{type(self).__name__} is not merged; nothing to unmerge", stacklevel=2)
            return
        for weight, delta in zip(self.merge_targets(), self.delta_weights()):
            weight.copy_(weight.to(delta.dtype) - delta)
        self.merged = False

    # A merged layer's state dict: what it adds (e.g. a "merged" flag) and how it loads back.
    def _merged_state(self) -> dict[str, torch.Tensor]:
        return {}

    def _merged_state_keys(self) -> tuple[str, ...]:
        return ()

    def _load_merged_state(self, extra: dict[str, torch.Tensor]) -> None:
        pass

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, value in self._merged_state().items():  # only while merged: keys unchanged otherwise
            destination[prefix + key] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        extra = {key: state_dict[prefix + key] for key in self._merged_state_keys()
                 if prefix + key in state_dict}
        for key in extra:
            if prefix + key in unexpected_keys:
                unexpected_keys.remove(prefix + key)
        if prefix + "base.weight" in state_dict:  # the base's weight is loaded: W0, or W0 + ΔW
            self._load_merged_state(extra)
