"""How each layer type takes LoRA from a PEFT file: its keys and their shapes, what is refused on
it, and the arguments its wrapper is built with (through ``inject.LORA_WRAPPERS``).

PEFT 0.21.2's tensors per layer type (``peft/tuners/lora/layer.py``; keys after
``base_model.model.<module path>``)::

    nn.Linear      .lora_A.weight (r, in)                .lora_B.weight (out, r)
                   (DoRA: .lora_magnitude_vector (out,))
    nn.Embedding   .lora_embedding_A (r, num_embeddings) .lora_embedding_B (embedding_dim, r)
    nn.Conv1d/2d   .lora_A.weight (r, c_in, *kernel)     .lora_B.weight (c_out, r, 1, ...)

``load_peft_adapter`` knows layer types only through ``PEFT_LAYER_RULES`` (one ``PeftLayerRule``
per base type) and the wrappers' ``peft_tensor_names``: a new layer type plugs in with one entry
here beside its ``LORA_WRAPPERS`` one. Every function here only reads the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .inject import wrapper_for
from .lora_layer import LoRALayer
from .peft_keys import PREFIX

__all__ = ["SUFFIXES", "PeftLayerRule", "PEFT_LAYER_RULES", "rule_for", "layer_problem",
           "check_tensors", "build_wrapper", "uses_pissa"]

# Every per-layer key suffix PEFT 0.21.2 writes for LoRA (and DoRA) on the types below.
SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", ".lora_embedding_A",
            ".lora_embedding_B")


@dataclass(frozen=True)
class PeftLayerRule:
    """What one base type needs: ``shapes(module, r, config)`` → {key suffix: shape} (exactly the
    keys PEFT writes for it), ``sizes(module)`` (the sizes those shapes come from, for messages),
    ``problem(module, r, config)`` → why it cannot be loaded here or None, and
    ``options(config)`` → the wrapper's arguments besides ``r`` and ``lora_alpha``."""

    shapes: Callable[[nn.Module, int, dict], dict[str, tuple[int, ...]]]
    sizes: Callable[[nn.Module], str]
    problem: Callable[[nn.Module, int, dict], str | None]
    options: Callable[[dict], dict]


def _linear_shapes(module: nn.Linear, r: int, config: dict) -> dict[str, tuple[int, ...]]:
    shapes = {".lora_A.weight": (r, module.in_features), ".lora_B.weight": (module.out_features, r)}
    if config["use_dora"]:
        shapes[".lora_magnitude_vector"] = (module.out_features,)
    return shapes


def _linear_options(config: dict) -> dict:
    """PiSSA's SVD is redone on load; other inits only pick A and B, which the file overwrites."""
    return {"lora_dropout": config["lora_dropout"], "use_rslora": config["use_rslora"],
            "use_dora": bool(config["use_dora"]), "allow_rank_above_features": True,
            "init_lora_weights": "pissa" if config["init_lora_weights"] == "pissa" else True}


def _no_dora(kind: str, config: dict) -> str | None:
    if config["use_dora"]:
        return (f"is an {kind} and the config has use_dora=true: DoRA is implemented here for "
                f"nn.Linear only (PEFT also has it for {kind}). Load this adapter with PEFT, or "
                f"train it without this {kind} in target_modules")
    return None


def _rank_problem(r: int, limit: int, where: str) -> str | None:
    if r > limit:
        return (f"has r={r} (from r/rank_pattern), above {where} = {limit}: PEFT allows it, but "
                "this package's wrapper refuses a rank its update cannot reach. Load this adapter "
                f"with PEFT, or train it with r <= {limit} for this layer (rank_pattern)")
    return None


def _embedding_problem(module: nn.Embedding, r: int, config: dict) -> str | None:
    if module.max_norm is not None:
        return (f"has max_norm={module.max_norm}: its lookup renormalises rows in place, which "
                "LoRAEmbedding refuses (merging could not reproduce it). Use a base embedding "
                "with max_norm=None, or load this adapter with PEFT")
    if hasattr(module, "embed_scale"):
        return ("has an embed_scale (a scaled embedding, e.g. Gemma's): PEFT multiplies LoRA's "
                "output by it too, LoRAEmbedding does not. Load this adapter with PEFT")
    return _no_dora("nn.Embedding", config) or _rank_problem(
        r, min(module.weight.shape), "min(num_embeddings, embedding_dim)")


def _conv_problem(module: nn.Module, r: int, config: dict) -> str | None:
    kind = f"nn.{type(module).__name__}"
    if module.groups != 1:
        return (f"is an {kind} with groups={module.groups}: PEFT gives it a grouped 1×1 lora_B "
                f"(c_out, r/groups, 1...), an update that is not one low-rank matrix (PEFT cannot "
                "merge it either); LoRAConv1d/LoRAConv2d take groups=1 only. Load this adapter "
                "with PEFT, or train it without this conv in target_modules")
    if set(module.dilation) != {1} or module.padding_mode != "zeros":
        return (f"has dilation={module.dilation} and padding_mode={module.padding_mode!r}: PEFT "
                "0.21.2 builds its lora_A without them (a dilated conv fails in PEFT's forward; "
                "another padding mode pads A's input with zeros), so the same tensors would "
                "compute something else here (save_peft_adapter refuses these convs too). Use "
                "dilation=1 and padding_mode='zeros', or load this adapter with PEFT")
    if config["init_lora_weights"] == "pissa":
        return ("is a conv and the config has init_lora_weights='pissa': PEFT 0.21.2 has no "
                "PiSSA for convs (it raises 'Unknown initialization'), so PEFT did not write this "
                "file; save it from PEFT with init_lora_weights=True")
    return _no_dora(kind, config) or _rank_problem(
        r, min(module.weight.shape[0], module.weight[0].numel()), "min(c_out, c_in·k²)")


def _conv_shapes(module: nn.Module, r: int, config: dict) -> dict[str, tuple[int, ...]]:
    weight = module.weight  # (c_out, c_in, *kernel)
    return {".lora_A.weight": (r, *weight.shape[1:]),
            ".lora_B.weight": (weight.shape[0], r, *(1,) * (weight.dim() - 2))}


_CONV = PeftLayerRule(
    shapes=_conv_shapes,
    sizes=lambda m: f"c_in={m.in_channels}, c_out={m.out_channels}, kernel_size={m.kernel_size}",
    problem=_conv_problem,
    options=lambda config: {"lora_dropout": config["lora_dropout"],
                            "use_rslora": config["use_rslora"]})

PEFT_LAYER_RULES: dict[type[nn.Module], PeftLayerRule] = {
    nn.Linear: PeftLayerRule(
        shapes=_linear_shapes,
        sizes=lambda m: f"in_features={m.in_features}, out_features={m.out_features}",
        problem=lambda module, r, config: None, options=_linear_options),
    nn.Embedding: PeftLayerRule(  # PEFT creates a dropout for embeddings but never applies it
        shapes=lambda m, r, config: {".lora_embedding_A": (r, m.num_embeddings),
                                     ".lora_embedding_B": (m.embedding_dim, r)},
        sizes=lambda m: f"num_embeddings={m.num_embeddings}, embedding_dim={m.embedding_dim}",
        problem=_embedding_problem,
        options=lambda config: {"lora_dropout": 0.0, "use_rslora": config["use_rslora"]}),
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
}
"""Base type → how LoRA from a PEFT file goes onto it (see the module docstring)."""


def rule_for(module: nn.Module) -> PeftLayerRule | None:
    """The ``PEFT_LAYER_RULES`` entry for ``module`` (by ``isinstance``), or None."""
    return next((rule for kind, rule in PEFT_LAYER_RULES.items() if isinstance(module, kind)), None)


def layer_problem(name: str, module: nn.Module, r: int, config: dict) -> str | None:
    """Why LoRA from a PEFT file cannot go onto ``module`` (at path ``name``), or None if it can."""
    kind = type(module).__name__
    if isinstance(module, LoRALayer):
        return (f"module '{name}' already has LoRA; load the adapter into the base model "
                "(a fresh one, or merge_and_unload(model) first)")
    if kind == "Conv1D":
        return (f"module '{name}' is a transformers Conv1D (GPT-2 style), whose weight is stored "
                "(in_features, out_features), the transpose of nn.Linear's; replace it by an "
                "nn.Linear holding weight.T and the same bias (notebook 09), then load")
    rule = rule_for(module)
    if rule is None:
        return (f"module '{name}' is a {kind}: LoRA from a PEFT file goes onto nn.Linear, "
                "nn.Embedding, nn.Conv1d and nn.Conv2d here (PEFT's LoRA for other layers, e.g. "
                "nn.Conv3d or nn.MultiheadAttention, is not loaded by this package)")
    problem = rule.problem(module, r, config)
    return f"module '{name}' ({kind}) {problem}" if problem else None


def _unexpected(name: str, module: nn.Module, suffixes: list[str]) -> str:
    """Why keys that ``module``'s type does not take are in the file, by what they are."""
    kind = f"nn.{type(module).__name__}"
    if any("lora_embedding_" in s for s in suffixes):
        why = f"embedding LoRA, which PEFT writes for an nn.Embedding, but '{name}' is an {kind}"
    elif any(s.startswith(".lora_magnitude_vector") for s in suffixes):
        why = "DoRA although use_dora is false"
    else:
        why = (f"'{name}' is an {kind}, whose PEFT keys are lora_embedding_A/lora_embedding_B; "
               "lora_A.weight/lora_B.weight are a linear or conv layer's")
    return f"unexpected tensors {[PREFIX + name + s for s in suffixes]} ({why})"


def check_tensors(name: str, module: nn.Module, r: int, config: dict,
                  parts: dict[str, torch.Tensor]) -> None:
    """``parts`` (key suffix → tensor, for module path ``name``) holds exactly the keys PEFT
    writes for ``module``'s type, each with the shape rank ``r`` gives it; else a ValueError."""
    rule = rule_for(module)
    expected = rule.shapes(module, r, config)
    unexpected = sorted(set(parts) - set(expected))
    if unexpected:
        raise ValueError(_unexpected(name, module, unexpected) + f"; expected {sorted(expected)}")
    missing = [PREFIX + name + s for s in expected if s not in parts]
    if missing:
        why = (" (use_dora is true: every DoRA layer has a magnitude vector)"
               if all(m.endswith(".lora_magnitude_vector") for m in missing) else "")
        raise ValueError(f"module '{name}' lacks {missing}{why}")
    for suffix, shape in expected.items():
        if tuple(parts[suffix].shape) != shape:
            raise ValueError(f"{PREFIX + name + suffix} has shape {tuple(parts[suffix].shape)}, "
                             f"expected {shape} (r={r} from the config; '{name}' has "
                             f"{rule.sizes(module)}): is this the base model it was trained on?")


def build_wrapper(module: nn.Module, r: int, lora_alpha: float, config: dict) -> LoRALayer:
    """The LoRA wrapper ``apply_lora`` would build for ``module`` (``LORA_WRAPPERS``), with PEFT's
    ``r``, ``lora_alpha`` and the config's options for its type; freezes ``module``'s weights."""
    return wrapper_for(module)(module, r=r, lora_alpha=lora_alpha,
                               **rule_for(module).options(config))


def uses_pissa(module: nn.Module, config: dict) -> bool:
    """Whether building ``module``'s wrapper rewrites its weight (PiSSA's residual)."""
    return rule_for(module).options(config).get("init_lora_weights") == "pissa"
