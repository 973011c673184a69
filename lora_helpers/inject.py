r"""Put LoRA into a model by module name, freeze the rest, merge, unload and switch it off.

Names follow Hugging Face PEFT (``target_modules``, ``merge_and_unload``, ...) so what a learner
writes here carries over. A list of targets matches a module whose qualified name equals one of
them or ends with ``"." + target`` (PEFT's suffix rule): ``["q_proj"]`` matches
``"blocks.0.attn.q_proj"`` but not ``"blocks.0.attn.qq_proj"``. A single string is, as in PEFT, a
regular expression that must match the whole qualified name (``re.fullmatch``):
``r".*\.q_proj"`` or ``"blocks.0.attn.q_proj"``, but not ``"q_proj"`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .attention import LoRAFusedLinear, LoRAMultiheadAttention
from .conv import LoRAConv1d, LoRAConv2d
from .embedding import LoRAEmbedding
from .layers import LoRALinear
from .quantization import NF4Linear

__all__ = [
    "apply_lora",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "disable_lora",
    "lora_layers",
]

_BIAS_MODES = ("none", "all", "lora_only")

# Layers other than nn.Linear that apply_lora adapts, by exact type -> the wrapper it uses.
_WRAPPERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Embedding: LoRAEmbedding, nn.Conv1d: LoRAConv1d, nn.Conv2d: LoRAConv2d,
    nn.MultiheadAttention: LoRAMultiheadAttention}
_LORA_TYPES = (LoRALinear, LoRAEmbedding, LoRAConv1d, LoRAConv2d, LoRAMultiheadAttention,
               LoRAFusedLinear)


def _lora_parameter_names(layer: nn.Module) -> tuple[str, ...]:
    """The trainable LoRA tensors of a layer (``lora_A``/``lora_B`` for ``LoRALinear``)."""
    return getattr(layer, "lora_parameter_names", ("lora_A", "lora_B"))


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(qualified name, layer)`` for every LoRA layer in ``model`` (``LoRALinear``,
    ``LoRAEmbedding``, ``LoRAConv1d``/``2d``, ``LoRAMultiheadAttention``, ``LoRAFusedLinear``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LORA_TYPES)]


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers; call apply_lora(model, "
                         "target_modules=[...]) first")
    return layers


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _target_matcher(target_modules: str | Iterable[str]) -> tuple[list[str], Callable]:
    """``(targets, matches)``: PEFT's rule, a string as one regex matched in full, a list by suffix."""
    if isinstance(target_modules, str):
        if not target_modules:
            raise TypeError("target_modules must be a non-empty list of module names (or one "
                            "regex string), got ''; e.g. target_modules=['q_proj']")
        try:
            pattern = re.compile(target_modules)
        except re.error as error:
            raise ValueError(f"target_modules={target_modules!r} is a string, which PEFT reads as a "
                             f"regular expression, and it is not a valid one ({error}); for module "
                             "names pass a list, e.g. ['q_proj']") from None
        return [target_modules], lambda name, target: pattern.fullmatch(name) is not None
    targets = list(target_modules) if isinstance(target_modules, Iterable) else []
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise TypeError(f"target_modules must be a non-empty list of module names (or one regex "
                        f"string), got {target_modules!r}; e.g. target_modules=['q_proj', 'v_proj']")
    return targets, _matches


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def apply_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    r: int = 8,
    lora_alpha: float = 8,
    lora_dropout: float = 0.0,
    use_rslora: bool = False,
    init_lora_weights: bool | str = True,
    use_dora: bool = False,
) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers by ``LoRALinear`` and freeze everything else.

    Works in place and returns ``model``. Every target must match at least one ``nn.Linear``;
    otherwise a ``ValueError`` lists the model's linear layers. All checks run before anything
    changes, so after an error the model is exactly as it was.

    Args:
        model: any ``nn.Module``.
        target_modules: a list of module names, matched by PEFT's suffix rule, or one string,
            a regex matched against the whole qualified name (PEFT's rule for a string).
        r, lora_alpha, lora_dropout, use_rslora, init_lora_weights, use_dora: as in
            ``LoRALinear``.
    """
    targets, _matches = _target_matcher(target_modules)
    linear_names, chosen = [], []
    attention_out_projs = {f"{n}.out_proj" if n else "out_proj"
                           for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    inside_lora = {f"{n}.base" for n, _ in lora_layers(model)}
    for name, module in model.named_modules():
        if name in inside_lora:
            continue
        if isinstance(module, (nn.Linear, NF4Linear)):  # NF4Linear: QLoRA's quantized base
            linear_names.append(name)
        if not any(_matches(name, t) for t in targets):
            continue
        if isinstance(module, _LORA_TYPES):
            raise ValueError(f"module '{name}' already has LoRA; apply_lora once per layer "
                             "(or merge_and_unload(model) first)")
        if name in attention_out_projs:
            raise ValueError(
                f"module '{name}' is the out_proj of an nn.MultiheadAttention, whose forward "
                "uses out_proj.weight directly and never calls out_proj(x): LoRA there would "
                "silently do nothing. Use attention with separate q_proj/k_proj/v_proj/out_proj "
                "nn.Linear layers (lora_helpers.MultiHeadSelfAttention)")
        if isinstance(module, (nn.Linear, NF4Linear)) or type(module) in _WRAPPERS:
            chosen.append(name)
    unmatched = [t for t in targets if not any(_matches(n, t) for n in chosen)]
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"
              and any(_matches(n, t) for t in unmatched)]
    if conv1d:  # transformers' Conv1D (GPT-2): a linear layer with its weight stored transposed
        raise ValueError(
            f"target_modules {unmatched} match {conv1d[:3]}{' ...' if len(conv1d) > 3 else ''}, "
            "transformers Conv1D layers (GPT-2 style): linear layers whose weight is stored "
            "(in_features, out_features), the transpose of nn.Linear's (out_features, in_features), "
            "which LoRALinear wraps. Replace each by an nn.Linear holding weight.T and the same "
            "bias (notebook 09 shows how), or use PEFT, whose LoraConfig(fan_in_fan_out=True) "
            "handles this layout")
    if unmatched:
        regex = (" (a string is a regex matched against the whole module name, as in PEFT; "
                 "for a module name pass a list, e.g. [" + repr(target_modules) + "])"
                 if isinstance(target_modules, str) else "")
        raise ValueError(f"target_modules {unmatched} match no nn.Linear in the model{regex}; "
                         f"its linear layers are: {linear_names}")
    linear_chosen = [n for n in chosen if type(model.get_submodule(n)) not in _WRAPPERS]
    too_small = {name: (m.in_features, m.out_features) for name in linear_chosen
                 if r > min((m := model.get_submodule(name)).in_features, m.out_features)
                 } if isinstance(r, int) and not isinstance(r, bool) else {}
    if too_small:
        raise ValueError(f"r={r} exceeds min(in_features, out_features) of {too_small} (name: "
                         "(in, out)); a rank-r update there has rank at most the smaller size. "
                         "Leave these modules out of target_modules or use a smaller r")

    flags = {p: p.requires_grad for p in model.parameters()}
    # PiSSA writes its residual into each base weight: keep the originals until all layers are built
    originals = ({name: model.get_submodule(name).weight.detach().clone() for name in linear_chosen}
                 if init_lora_weights == "pissa" else {})
    try:  # LoRALinear may refuse an argument (e.g. r too large) after freezing earlier bases
        wrapped = {name: _wrap(model.get_submodule(name), r=r, lora_alpha=lora_alpha,
                               lora_dropout=lora_dropout, use_rslora=use_rslora,
                               init_lora_weights=init_lora_weights, use_dora=use_dora)
                   for name in chosen}
    except (TypeError, ValueError):
        for p, flag in flags.items():
            p.requires_grad_(flag)
        with torch.no_grad():
            for name, weight in originals.items():
                model.get_submodule(name).weight.copy_(weight)
        raise
    for name, layer in wrapped.items():
        _set_submodule(model, name, layer)
    mark_only_lora_as_trainable(model)
    return model


def _wrap(module: nn.Module, use_dora: bool, **kwargs) -> nn.Module:
    """The LoRA wrapper for ``module``'s type (``LoRALinear`` for linear layers)."""
    wrapper = _WRAPPERS.get(type(module))
    if wrapper is None:
        return LoRALinear(module, use_dora=use_dora, **kwargs)
    if use_dora:
        raise ValueError(f"use_dora=True is implemented for linear layers only; "
                         f"{type(module).__name__} layers take plain LoRA")
    return wrapper(module, **kwargs)


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except LoRA's ``lora_A`` and ``lora_B`` (and DoRA's magnitude).

    Args:
        bias: ``"none"`` keeps every bias frozen; ``"all"`` trains every bias in the model;
            ``"lora_only"`` trains the biases of the adapted layers only (loralib's modes).
    """
    if bias not in _BIAS_MODES:
        raise ValueError(f"bias must be one of {_BIAS_MODES}, got {bias!r}")
    layers = _require_lora(model)
    model.requires_grad_(False)
    for _, layer in layers:
        for pname in _lora_parameter_names(layer):
            getattr(layer, pname).requires_grad_(True)
        if getattr(layer, "use_dora", False):
            layer.lora_magnitude_vector.requires_grad_(True)
        if bias == "lora_only" and getattr(layer.base, "bias", None) is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        for name, param in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                param.requires_grad_(True)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer (``W ← W0 + ΔW``). Refuses NaN/inf before changing anything."""
    unmerged = [(name, layer) for name, layer in _require_lora(model) if not layer.merged]
    quantized = [name for name, layer in unmerged if isinstance(layer.base, NF4Linear)]
    if quantized:  # refused before any layer changes; LoRALinear.merge says why
        raise ValueError(f"refusing to merge: {quantized} have NF4Linear bases (4-bit); keep "
                         "the adapters unmerged, or call lora_helpers.dequantize_model(model) "
                         "first and merge exactly. No weight was changed")
    with torch.no_grad():
        bad = [name for name, layer in unmerged if not all(
            d.isfinite().all() for d in (layer.delta_weights() if hasattr(layer, "delta_weights")
                                         else (layer.delta_weight(),)))]
    if bad:
        raise ValueError(f"refusing to merge: the LoRA update of {bad} contains NaN or inf; "
                         "no weight was changed")
    for _, layer in unmerged:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora`` on every merged LoRA layer (``W ← W - ΔW``)."""
    for _, layer in _require_lora(model):
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and replace it by its plain ``nn.Linear`` holding ``W0 + ΔW``.

    Returns the model (a plain ``nn.Linear`` if ``model`` itself was a ``LoRALinear``). The
    result has no LoRA left: use it for deployment, where it costs no extra latency (paper §4.1).
    """
    merge_lora(model)
    if isinstance(model, LoRALinear):
        return model.base
    for name, layer in lora_layers(model):
        _set_submodule(model, name, layer.base)
    return model


@contextmanager
def disable_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the ``with`` block the model computes the base model's output (PEFT's
    ``disable_adapter``); leaving it restores the adapted output, also after an exception.

    A merged model cannot be disabled this way (its ΔW lives inside the weights): call
    ``unmerge_lora(model)`` first.
    """
    layers = _require_lora(model)
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise ValueError(f"cannot disable LoRA on merged layers {merged}: their update is inside "
                         "base.weight; call unmerge_lora(model) first")
    previous = [layer.disabled for _, layer in layers]
    try:
        for _, layer in layers:
            layer.disabled = True
        yield model
    finally:
        for (_, layer), was in zip(layers, previous):
            layer.disabled = was
