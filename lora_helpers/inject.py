r"""Put LoRA into a model by module name, freeze the rest, merge, unload and switch it off.

Names follow Hugging Face PEFT (``target_modules``, ``merge_and_unload``, ...) so what a learner
writes here carries over. A list of targets matches a module whose qualified name equals one of
them or ends with ``"." + target`` (PEFT's suffix rule): ``["q_proj"]`` matches
``"blocks.0.attn.q_proj"`` but not ``"blocks.0.attn.qq_proj"``. A single string is, as in PEFT, a
regular expression that must match the whole qualified name (``re.fullmatch``):
``r".*\.q_proj"`` or ``"blocks.0.attn.q_proj"``, but not ``"q_proj"`` alone. (The rules live in
``lora_helpers._modules``, shared with ``quantize_model``.)

**Extension point: which wrapper adapts which layer.** ``LORA_WRAPPERS`` maps a layer type to a
function ``build(module, **lora_kwargs) -> wrapped module``, like PEFT's dispatchers. Today it
holds ``nn.Linear → LoRALinear`` (``DoRALinear`` with ``use_dora=True``); the modules
``embedding``, ``conv`` and ``attention`` add ``nn.Embedding``, ``nn.Conv1d``/``nn.Conv2d`` and
``nn.MultiheadAttention`` the same way, when the package is imported. To adapt another type,
write its wrapper in a new module as a subclass of ``lora_helpers.lora_layer.LoRALayer`` (the
protocol everything below uses: ``merged``, ``disabled``, ``merge()``, ``unmerge()``,
``delta_weights()``, ``lora_parameter_names``) and add one entry,
``LORA_WRAPPERS[nn.Embedding] = build_embedding`` (``plain_lora_builder(LoRAEmbedding,
"nn.Embedding")`` makes one that refuses DoRA); ``apply_lora``'s matching, checks and rollback
then apply to it unchanged. A layer that is not a subclass of a key but behaves like one names
it in the class attribute ``lora_base_kind`` (QLoRA's ``NF4Linear`` sets
``lora_base_kind = nn.Linear``), so this module never imports its variants' bases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ._modules import attention_out_projs, replace_with_rollback, set_submodule, target_matcher
from .layers import LoRALinear
from .lora_layer import LoRALayer, is_mergeable

__all__ = [
    "apply_lora",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "disable_lora",
    "lora_layers",
    "require_lora",
    "LORA_WRAPPERS",
    "plain_lora_builder",
    "BIAS_MODES",
]

BIAS_MODES = ("none", "all", "lora_only")


def _wrap_linear(module: nn.Module, use_dora: bool = False, **lora_kwargs) -> LoRALinear:
    """``nn.Linear`` (or a layer with ``lora_base_kind = nn.Linear``) → ``LoRALinear`` (its DoRA
    subclass with ``use_dora=True``, from ``LoRALinear.variants``)."""
    return LoRALinear(module, use_dora=use_dora, **lora_kwargs)


LORA_WRAPPERS: dict[type[nn.Module], Callable[..., nn.Module]] = {nn.Linear: _wrap_linear}
"""Layer type → the function that wraps it with LoRA (see the module docstring)."""


def plain_lora_builder(wrapper: Callable[..., nn.Module], kind: str) -> Callable[..., nn.Module]:
    """A ``LORA_WRAPPERS`` entry for a layer type that takes plain LoRA only: ``use_dora=True``
    is refused, naming ``kind`` (e.g. ``"nn.Embedding"``); the other arguments go to ``wrapper``."""
    def build(module: nn.Module, use_dora: bool = False, **lora_kwargs) -> nn.Module:
        if use_dora:
            raise ValueError(f"use_dora=True is implemented for linear layers only; {kind} layers "
                             "take plain LoRA")
        return wrapper(module, **lora_kwargs)
    return build


def wrapper_for(module: nn.Module) -> Callable[..., nn.Module] | None:
    """The ``LORA_WRAPPERS`` entry for ``module``'s type (or its ``lora_base_kind``), or None."""
    if isinstance(module, LoRALayer):
        return None
    kind = getattr(type(module), "lora_base_kind", None)
    for base_type, build in LORA_WRAPPERS.items():
        if isinstance(module, base_type) or kind is base_type:
            return build
    return None


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """Return ``(qualified name, layer)`` for every LoRA layer (a ``LoRALayer``) in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALayer)]


def require_lora(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """``lora_layers(model)``, or a ``ValueError`` saying to call ``apply_lora`` if there is none."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers (nor other LoRA layers); call apply_lora(model, "
                         "target_modules=[...]) first")
    return layers


def _choose_targets(model: nn.Module, target_modules: str | Iterable[str]) -> list[str]:
    """The qualified names ``apply_lora`` wraps, or a ``ValueError`` naming what is wrong."""
    targets, match = target_matcher(target_modules)
    out_projs = attention_out_projs(model)
    inside_lora = {f"{n}.base" if n else "base" for n, _ in lora_layers(model)}
    adaptable, chosen = [], []
    for name, module in model.named_modules():
        if name in inside_lora:
            continue
        if wrapper_for(module) is _wrap_linear:  # the hint lists linear layers (as notebook 03 shows)
            adaptable.append(name)
        if not any(match(name, t) for t in targets):
            continue
        if isinstance(module, LoRALayer):
            raise ValueError(f"module '{name}' already has LoRA; apply_lora once per layer "
                             "(or merge_and_unload(model) first)")
        if name in out_projs:
            raise ValueError(
                f"module '{name}' is the out_proj of an nn.MultiheadAttention, whose forward "
                "uses out_proj.weight directly and never calls out_proj(x): LoRA there would "
                "silently do nothing. Use attention with separate q_proj/k_proj/v_proj/out_proj "
                "nn.Linear layers (lora_helpers.MultiHeadSelfAttention)")
        if wrapper_for(module) is not None:
            chosen.append(name)
    unmatched = [t for t in targets if not any(match(n, t) for n in chosen)]
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"
              and any(match(n, t) for t in unmatched)]
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
                         f"its linear layers are: {adaptable}")
    return chosen


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
    """Replace the targeted layers by their LoRA wrappers and freeze everything else.

    Works in place and returns ``model``. Every target must match at least one adaptable layer
    (a type in ``LORA_WRAPPERS``: ``nn.Linear`` today); otherwise a ``ValueError`` lists them.
    All or nothing: if building any wrapper raises (a refused argument, PiSSA's SVD failing on
    the second layer, ...), every weight and ``requires_grad`` flag is restored and the error
    propagates.

    Args:
        model: any ``nn.Module`` that contains the targets (not the target itself: wrap a
            single layer with ``LoRALinear(layer)``).
        target_modules: a list of module names, matched by PEFT's suffix rule, or one string,
            a regex matched against the whole qualified name (PEFT's rule for a string).
        r, lora_alpha, lora_dropout, use_rslora, init_lora_weights, use_dora: as in
            ``LoRALinear`` (``use_dora=True`` builds ``DoRALinear`` layers).
    """
    chosen = _choose_targets(model, target_modules)
    if "" in chosen:
        raise ValueError("target_modules matched the model itself; apply_lora adapts layers "
                         "inside a model. For a single layer use LoRALinear(layer, r=...)")
    sizes = {name: (getattr(m, "in_features", None), getattr(m, "out_features", None))
             for name in chosen for m in [model.get_submodule(name)]}
    too_small = {name: size for name, size in sizes.items() if None not in size and r > min(size)
                 } if isinstance(r, int) and not isinstance(r, bool) else {}
    if too_small:
        raise ValueError(f"r={r} exceeds min(in_features, out_features) of {too_small} (name: "
                         "(in, out)); a rank-r update there has rank at most the smaller size. "
                         "Leave these modules out of target_modules or use a smaller r")
    kwargs = dict(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                  init_lora_weights=init_lora_weights, use_dora=use_dora)
    replace_with_rollback(model, chosen, lambda module: wrapper_for(module)(module, **kwargs))
    mark_only_lora_as_trainable(model)
    return model


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except each LoRA layer's ``lora_parameter_names`` (``lora_A`` and
    ``lora_B``, DoRA's magnitude, an embedding's ``lora_embedding_A``/``B``).

    Args:
        bias: ``"none"`` keeps every bias frozen; ``"all"`` trains every bias in the model;
            ``"lora_only"`` trains the biases of the adapted layers only (loralib's modes).
    """
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    layers = require_lora(model)
    model.requires_grad_(False)
    for _, layer in layers:
        for pname in layer.lora_parameter_names:  # lora_A, lora_B (and DoRA's magnitude), ...
            getattr(layer, pname).requires_grad_(True)
        if bias == "lora_only" and getattr(layer.base, "bias", None) is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        for name, param in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                param.requires_grad_(True)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer (``W ← W0 + ΔW``). Refuses NaN/inf before changing anything."""
    unmerged = [(name, layer) for name, layer in require_lora(model) if not layer.merged]
    quantized = [name for name, layer in unmerged if not is_mergeable(layer.base)]
    if quantized:  # refused before any layer changes; LoRALinear.merge says why
        raise ValueError(f"refusing to merge: {quantized} have read-only (NF4, 4-bit) bases; keep "
                         "the adapters unmerged, or call lora_helpers.dequantize_model(model) "
                         "first and merge exactly. No weight was changed")
    with torch.no_grad():
        bad = [name for name, layer in unmerged
               if not all(d.isfinite().all() for d in layer.delta_weights())]
    if bad:
        raise ValueError(f"refusing to merge: the LoRA update of {bad} contains NaN or inf; "
                         "no weight was changed")
    for _, layer in unmerged:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora`` on every merged LoRA layer (``W ← W - ΔW``)."""
    for _, layer in require_lora(model):
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and replace it by its plain base layer holding ``W0 + ΔW``.

    Returns the model (the base layer if ``model`` itself was a LoRA layer). The
    result has no LoRA left: use it for deployment, where it costs no extra latency (paper §4.1).
    """
    merge_lora(model)
    if isinstance(model, LoRALayer):
        return model.base
    for name, layer in lora_layers(model):
        set_submodule(model, name, layer.base)
    return model


@contextmanager
def disable_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the ``with`` block the model computes the base model's output (PEFT's
    ``disable_adapter``); leaving it restores the adapted output, also after an exception.

    A merged model cannot be disabled this way (its ΔW lives inside the weights): call
    ``unmerge_lora(model)`` first.
    """
    layers = require_lora(model)
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
