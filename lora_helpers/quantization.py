"""QLoRA's frozen 4-bit layer, ``NF4Linear``, and whole-model ``quantize_model``/``dequantize_model``.

The NF4 data type itself (levels, blockwise absmax, double quantization) is in
``lora_helpers.nf4``; its names are re-exported here.

``NF4Linear`` holds an NF4 weight (an ``NF4Tensor``), frozen, and dequantizes it on every forward call;
``lora_helpers.apply_lora`` adapts it like an ``nn.Linear`` (QLoRA = LoRA on an NF4 base).

Merging a LoRA update into an ``NF4Linear`` is refused (``LoRALinear.merge`` raises): the sum
W + ΔW is not representable in NF4, and re-quantizing it would silently add rounding error to the
update (PEFT warns about exactly this for 4-bit bases). Keep the adapter unmerged (QLoRA's way),
or turn the bases back into full-precision ``nn.Linear`` with ``dequantize_model`` first and merge
exactly; ``NF4Linear.from_linear`` re-quantizes the merged layer if you accept that error.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ._modules import attention_out_projs, replace_with_rollback, set_submodule, target_matcher
from .nf4 import NF4_LEVELS, NF4Tensor, nf4_levels, quantize_nf4

__all__ = ["nf4_levels", "NF4_LEVELS", "NF4Tensor", "quantize_nf4", "NF4Linear",
           "quantize_model", "dequantize_model"]


_NF4_TENSORS = ("codes", "absmax", "absmax_codes", "absmax_scales", "absmax_offset")


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 and dequantized on every call.

    ``forward(x) = F.linear(x, W_nf4, bias)`` with ``W_nf4 = quantized_weight.dequantize()``, an
    ``(out_features, in_features)`` matrix in ``dtype``. The layer has no trainable parameters:
    its quantized weight is held in buffers (so ``.to()``, ``state_dict`` and ``nbytes`` see it)
    and its bias, if any, is a frozen parameter. Build it with ``NF4Linear.from_linear``.

    ``lora_helpers.apply_lora`` wraps it in a ``LoRALinear`` like an ``nn.Linear`` (QLoRA),
    through a small protocol, so that the LoRA core never imports this module:
    ``lora_base_kind = nn.Linear`` (adapt me as a linear layer), ``mergeable = False`` (my weight
    cannot be written: no merge, no PiSSA residual), ``weight`` (the dequantized weight, a new
    tensor on every read, so writing into it changes nothing), ``dtype`` and ``device``.

    Shapes: input ``(..., in_features)`` → output ``(..., out_features)``.
    """

    lora_base_kind = nn.Linear
    mergeable = False

    def __init__(self, quantized_weight: NF4Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(quantized_weight, NF4Tensor):
            raise TypeError(f"quantized_weight must be an NF4Tensor, got "
                            f"{type(quantized_weight).__name__}; build one with quantize_nf4(w)")
        if len(quantized_weight.shape) != 2:
            raise ValueError(f"a linear layer's weight is 2-D (out, in), got shape "
                             f"{tuple(quantized_weight.shape)}")
        self.out_features, self.in_features = quantized_weight.shape
        # One storage: the tensors live only in buffers (so .to(), state_dict and
        # load_state_dict(..., assign=True) see and replace them); ``quantized_weight`` is rebuilt
        # from them on each read, so it can never go stale. Only the metadata is kept here.
        self._shape = quantized_weight.shape
        self._dtype = quantized_weight.dtype
        self.block_size = quantized_weight.block_size
        self.double_quant_block_size = quantized_weight.double_quant_block_size
        for name in _NF4_TENSORS:
            tensor = getattr(quantized_weight, name)
            if tensor is not None:
                self.register_buffer(name, tensor)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def quantized_weight(self) -> NF4Tensor:
        """The ``NF4Tensor`` over this layer's buffers (no copy; rebuilt on every read)."""
        return NF4Tensor(shape=self._shape, dtype=self._dtype, block_size=self.block_size,
                         double_quant_block_size=self.double_quant_block_size,
                         **{name: self._buffers.get(name) for name in _NF4_TENSORS})

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.double()``...: the buffers move as usual; a dtype cast also changes the
        dtype of the dequantized weight (the codes stay uint8)."""
        super()._apply(fn, recurse)
        self._dtype = fn(torch.empty(0, dtype=self._dtype)).dtype
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = False,
                    double_quant_block_size: int = 256) -> NF4Linear:
        """Quantize an ``nn.Linear``'s weight to NF4 (the bias is copied, in full precision)."""
        if isinstance(linear, NF4Linear):
            raise ValueError("this layer is already an NF4Linear; quantize the original nn.Linear")
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear.from_linear needs an nn.Linear, got {type(linear).__name__}; "
                            "only linear layers are quantized (to adapt a LoRALinear's base, "
                            "quantize before apply_lora)")
        quantized = quantize_nf4(linear.weight, block_size=block_size, double_quant=double_quant,
                                 double_quant_block_size=double_quant_block_size)
        return cls(quantized, linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the dequantized weight and of the inputs this layer expects."""
        return self.quantized_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, ``(out_features, in_features)``: a new tensor on every read
        (read-only in effect: writing into it does not change the stored NF4 codes)."""
        return self.dequantized_weight()

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses, ``(out_features, in_features)``."""
        return self.quantized_weight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_nf4ᵀ + bias``: ``(..., in_features)`` → ``(..., out_features)``."""
        return nn.functional.linear(x, self.dequantized_weight(), self.bias)  # (..., out)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the dequantized weight (and the bias) in ``dtype``.

        It is frozen, as this layer is; call ``.requires_grad_()`` on it to train it.
        """
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.device, dtype=self.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.requires_grad_(False)

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized weight (``NF4Tensor.nbytes``) plus the bias's bytes."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.quantized_weight.nbytes + bias

    def extra_repr(self) -> str:
        q = self.quantized_weight
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={q.block_size}, "
                f"double_quant={q.double_quant}")


def quantize_model(model: nn.Module, target_modules: str | Iterable[str] | None = None,
                   exclude_modules: str | Iterable[str] = (), block_size: int = 64,
                   double_quant: bool = False) -> nn.Module:
    """Replace ``nn.Linear`` layers of ``model`` by ``NF4Linear`` (in place; returns ``model``).

    Args:
        target_modules: a list of names matched by PEFT's suffix rule (``"fc1"`` matches
            ``"blocks.0.mlp.fc1"``), or one string, a regex matched against the whole name
            (PEFT's rule, as in ``apply_lora``); ``None`` means every ``nn.Linear``.
        exclude_modules: names or a regex (same rules) to leave in full precision, e.g.
            ``["head"]``; QLoRA keeps the output layer in 16 bits.
        block_size, double_quant: as in ``quantize_nf4``.
    Every name in ``target_modules`` and ``exclude_modules`` must match a linear layer. All checks
    (including the block size of every chosen layer) run before anything changes. The ``out_proj``
    of an ``nn.MultiheadAttention`` is never quantized: that module reads ``out_proj.weight``
    directly instead of calling it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    chosen = _choose_linears(model, target_modules, exclude_modules)
    replace_with_rollback(model, chosen, lambda linear: NF4Linear.from_linear(
        linear, block_size=block_size, double_quant=double_quant))
    return model


def _choose_linears(model: nn.Module, target_modules: str | Iterable[str] | None,
                    exclude_modules: str | Iterable[str]) -> list[str]:
    """The names ``quantize_model`` replaces: PEFT's matching rules (``lora_helpers._modules``)."""
    if target_modules is not None and not isinstance(target_modules, str) \
            and isinstance(target_modules, Iterable) and not list(target_modules):
        raise ValueError("target_modules is empty; pass None to quantize every nn.Linear")
    targets, match = target_matcher(target_modules) if target_modules is not None else (None, None)
    excluded, match_ex = (target_matcher(exclude_modules, "exclude_modules")
                          if isinstance(exclude_modules, str) or list(exclude_modules) else ([], None))
    out_projs = attention_out_projs(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in out_projs]
    for what, wanted, rule in (("target_modules", targets or [], match),
                               ("exclude_modules", excluded, match_ex)):
        unmatched = [t for t in wanted if not any(rule(n, t) for n in linears)]
        if unmatched:
            raise ValueError(f"{what} {unmatched} match no nn.Linear in the model; its linear "
                             f"layers are: {linears}")
    chosen = [n for n in linears if (targets is None or any(match(n, t) for t in targets))
              and not any(match_ex(n, t) for t in excluded)]
    if not chosen:
        raise ValueError(f"nothing to quantize: every linear layer {linears} is excluded")
    if "" in chosen:
        raise ValueError("pass a model that contains linear layers, not a single layer; for one "
                         "layer use NF4Linear.from_linear(layer)")
    merged = [n for n in chosen if n.endswith("base") and getattr(
        model.get_submodule(n.rpartition(".")[0]), "merged", False)]
    if merged:
        raise ValueError(f"{merged} are the bases of merged LoRA layers (they hold W0 + ΔW); "
                         "unmerge_lora(model) before quantizing, so that only W0 goes to NF4")
    return chosen


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every ``NF4Linear`` (also inside a ``LoRALinear``) by its full-precision
    ``nn.Linear`` (``to_linear()``); in place, returns ``model``. After it, merging is exact."""
    for name, module in list(model.named_modules()):
        if isinstance(module, NF4Linear):
            if not name:
                return module.to_linear()
            set_submodule(model, name, module.to_linear())
    return model
