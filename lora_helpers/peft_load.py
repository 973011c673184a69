"""``load_peft_adapter``: read PEFT's adapter files into a model, strictly (see ``peft_format``).

Three steps: parse (``_peft_read``: the config and the tensors), validate (each layer by its
type's rule in ``_peft_layers``, the selection, then biases and ``modules_to_save`` here), apply
(``_apply``: the only step that changes the model).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ._modules import set_submodule
from ._peft_layers import build_wrapper, check_tensors, layer_problem, uses_pissa
from ._peft_read import find_heads, read_config, read_tensors, split_keys
from .inject import mark_only_lora_as_trainable
from .peft_keys import PREFIX, resolve, targeted

__all__ = ["load_peft_adapter"]


def _check_layers(config: dict, per_module: dict[str, dict[str, torch.Tensor]],
                  modules: dict[str, nn.Module]) -> dict[str, tuple[int, float]]:
    """Each named module exists, is a type LoRA from PEFT can go onto here, is selected by the
    config, and holds exactly its type's keys with the shapes of its ``(r, alpha)``; returns
    those per module path."""
    specs = {}
    for name, parts in sorted(per_module.items()):
        if name not in modules:
            raise ValueError(f"the adapter names module '{name}', which the model does not have; "
                             "is this the base model it was trained on (base_model_name_or_path="
                             f"{config.get('base_model_name_or_path')!r})?")
        specs[name] = resolve(config, name)
        problem = layer_problem(name, modules[name], specs[name][0], config)
        if problem:
            raise ValueError(problem)
        check_tensors(name, modules[name], specs[name][0], config, parts)
    selected = {n for n in modules if targeted(config, n)
                and not any(n.startswith(p + ".") for p in per_module)}
    if selected != set(per_module):
        raise ValueError(
            f"target_modules={config['target_modules']!r} selects modules without tensors in the "
            f"file: {sorted(selected - set(per_module))}, and the file has tensors for modules it "
            f"does not select: {sorted(set(per_module) - selected)}")
    return specs


def _check_extras(config: dict, extra: dict[str, torch.Tensor], adapted: set[str],
                  heads: list[str], model: nn.Module) -> dict[str, torch.Tensor]:
    """Biases and ``modules_to_save`` tensors, keyed by the parameter they go into (the model's
    own path: ``<path>.base_layer.bias`` → ``<path>.bias`` before wrapping). A targeted layer's
    ``base_layer.weight`` (PEFT saves it with an embedding or ``lm_head`` target) is accepted only
    if it equals the model's weight, and not loaded."""
    params = dict(model.named_parameters())
    out = {}
    for path, value in sorted(extra.items()):
        head = next((h for h in heads if path.startswith(h + ".")), None)
        inner = path[len(head) + 1:].partition(".") if head else ("", "", "")
        if inner[0] in ("modules_to_save", "original_module"):
            # PEFT's bias="all" also writes the head wrapper's biases: its trained copy
            # ("modules_to_save", the same tensor as "<head>.bias") and the original
            # ("original_module"): accepted when they agree with those, not loaded again.
            own = f"{head}.{inner[2]}"
            expected = extra.get(own) if inner[0] == "modules_to_save" else params.get(own)
            if expected is None or not torch.equal(value, expected.to(value.dtype)):
                raise ValueError(f"{PREFIX + path!r} does not agree with '{own}' "
                                 f"({'in the file' if inner[0] == 'modules_to_save' else 'in the model'})")
            continue
        module, _, leaf = path.rpartition(".")
        if module.endswith(".base_layer"):
            module = module[:-len(".base_layer")]
            if module not in adapted:
                raise ValueError(f"unexpected tensor {PREFIX + path!r}: '{module}' has no LoRA "
                                 "tensors in the file")
            if leaf == "weight":
                weight = params.get(f"{module}.weight")
                if weight is None or weight.shape != value.shape or \
                        not torch.equal(value.to(weight.dtype), weight):
                    raise ValueError(
                        f"{PREFIX + path!r} is a copy of the base weight of '{module}' (PEFT saves "
                        "it when an embedding or lm_head is targeted) and it differs from this "
                        "model's weight: this is not the base model it was saved from, or the "
                        "weight was trained. Load into the right base, or re-save with PEFT's "
                        "save_pretrained(..., save_embedding_layers=False)")
                continue
            path = f"{module}.{leaf}"
        if path not in params:
            raise ValueError(f"the adapter has {PREFIX + path!r}, but the model has no parameter "
                             f"'{path}'; is this the base model it was trained on?")
        if tuple(value.shape) != tuple(params[path].shape):
            raise ValueError(f"{PREFIX + path!r} has shape {tuple(value.shape)}, the model's "
                             f"'{path}' {tuple(params[path].shape)}")
        out[path] = value
    for head in heads:
        missing = [f"{head}.{n}" for n, _ in model.get_submodule(head).named_parameters()
                   if f"{head}.{n}" not in out]
        if missing:
            raise ValueError(f"modules_to_save={config['modules_to_save']!r} selects '{head}', but "
                             f"the file lacks {[PREFIX + m for m in missing]}")
    return out


def _apply(model: nn.Module, config: dict, specs: dict[str, tuple[int, float]],
           per_module: dict[str, dict[str, torch.Tensor]], extra: dict[str, torch.Tensor],
           heads: list[str]) -> None:
    """Wrap, copy, freeze: the only step that changes ``model`` (all checks have passed)."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    flags = {p: p.requires_grad for p in model.parameters()}
    originals = {name: modules[name].weight.detach().clone() for name in specs
                 if uses_pissa(modules[name], config)}
    try:  # a wrapper may still refuse a value (e.g. PiSSA on a low-rank W0) after earlier layers
        wrapped = {name: build_wrapper(modules[name], r, alpha, config)
                   for name, (r, alpha) in specs.items()}
    except (TypeError, ValueError):
        for p, flag in flags.items():
            p.requires_grad_(flag)
        with torch.no_grad():
            for name, weight in originals.items():
                modules[name].weight.copy_(weight)
        raise
    with torch.no_grad():
        for name, layer in wrapped.items():
            # our name → PEFT's key suffix: lora_A (r, in[, *k]) ← .lora_A.weight, lora_B (out, r[, 1..])
            # ← .lora_B.weight, DoRA's m (out,) ← .lora_magnitude_vector (loaded as saved, not
            # re-initialised from W0), lora_embedding_A (r, n) / _B (d, r) ← the same names
            for ours, key in layer.peft_tensor_names.items():
                getattr(layer, ours).copy_(per_module[name]["." + key])  # cast to the layer's dtype
        for path, value in extra.items():
            params[path].copy_(value)
    for name, layer in wrapped.items():
        set_submodule(model, name, layer)
    mark_only_lora_as_trainable(model, bias=config["bias"])
    for head in heads:  # PEFT trains modules_to_save
        model.get_submodule(head).requires_grad_(True)


def load_peft_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply a PEFT LoRA adapter directory to ``model`` (in place) and return ``model``.

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (written by PEFT's
    ``save_pretrained`` or by ``save_peft_adapter``), wraps every module the file names in the
    wrapper ``apply_lora`` would give it (``LoRALinear``/``DoRALinear``, ``LoRAEmbedding``,
    ``LoRAConv1d``/``LoRAConv2d``) with the rank, alpha, dropout and rsLoRA setting that PEFT
    would give it (``r``/``lora_alpha`` and ``rank_pattern``/``alpha_pattern``; on a linear layer
    ``r`` above its size too, as PEFT allows; an embedding takes no dropout, as in PEFT, which
    creates one but never applies it), copies the tensors in (cast to the layer's dtype and
    device: float32 adapters on a half-precision base, as PEFT) and freezes everything but LoRA,
    as ``apply_lora`` does. ``init_lora_weights="pissa"``: the linear layers' base weights become
    PiSSA's residual (the SVD redone, as PEFT does), so load into the original base model.
    Trained biases (``bias="lora_only"``/``"all"``) and ``modules_to_save`` are loaded too and
    stay trainable, as in PEFT. ``exclude_modules``, ``layers_to_transform`` and
    ``layers_pattern`` select modules by PEFT's rules. A targeted layer's ``base_layer.weight``
    (PEFT writes it with an ``lm_head`` or embedding target) must equal the model's weight.

    Strict: the modules that ``target_modules`` selects (PEFT's rule: a list matches a module
    path or its ``"." + name`` suffix, a string is a regex matched in full) must be exactly the
    modules the tensor file names, each an ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d`` or
    ``nn.Conv2d`` without LoRA, with exactly PEFT's keys for its type
    (``base_model.model.<path>`` + ...)::

        nn.Linear      .lora_A.weight (r, in_features)       .lora_B.weight (out_features, r)
        nn.Embedding   .lora_embedding_A (r, num_embeddings) .lora_embedding_B (embedding_dim, r)
        nn.Conv1d/2d   .lora_A.weight (r, c_in, *kernel)     .lora_B.weight (c_out, r, 1, ...)

    plus ``.lora_magnitude_vector`` ``(out_features,)`` on every linear layer if ``use_dora`` is
    true and on none if it is false (DoRA, arXiv 2402.09353: one config value for all layers, as
    in PEFT; the magnitudes are loaded as saved, not re-initialised from ``W0``, and stay
    trainable). Refused, by name and why (``_peft_layers``): DoRA on an embedding or conv (here
    DoRA is linear-only), convs with ``groups > 1`` (PEFT's grouped ``lora_B`` is not one
    low-rank update), with dilation or a padding mode other than ``"zeros"`` (PEFT 0.21.2's
    ``lora_A`` omits them), embeddings with ``max_norm`` or an ``embed_scale``, embedding/conv
    ranks above ``min`` of the layer's sides, other layer types (``nn.Conv3d``,
    ``nn.MultiheadAttention``, ...). Anything else that does not fit raises a ``ValueError``
    naming it, before the model is changed. ``fan_in_fan_out`` is accepted either way: it
    describes how the *base* layer stores its weight (GPT-2's ``Conv1D``), while
    ``lora_A``/``lora_B`` are stored as ``nn.Linear`` weights in both cases; GPT-2's ``Conv1D``
    itself is refused (replace it by an ``nn.Linear``).

    Args:
        model: the base model the adapter was trained on, without LoRA at the named modules.
        directory: the adapter directory.
    """
    directory = Path(directory)
    config = read_config(directory)
    tensors = read_tensors(directory)
    modules = dict(model.named_modules())
    heads = find_heads(config, modules)
    per_module, extra = split_keys(config, tensors, heads)
    specs = _check_layers(config, per_module, modules)
    extra = _check_extras(config, extra, set(per_module), heads, model)
    _apply(model, config, specs, per_module, extra, heads)
    return model
