"""``load_peft_adapter``: read PEFT's adapter files into a model, strictly (see ``peft_format``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._modules import set_submodule
from .inject import mark_only_lora_as_trainable
from .layers import LoRALinear
from .peft_keys import (CONFIG_NAME, HEADS, IGNORED, INITS, MUST_BE_OFF, PREFIX, USED, WEIGHTS_NAME,
                        is_bias, resolve, safetensors_module, targeted)

__all__ = ["load_peft_adapter"]


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(directory)!r}; a PEFT adapter "
                                f"directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                                "(PeftModel.save_pretrained)")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ValueError(f"peft_type={config.get('peft_type')!r}: this package loads LoRA adapters "
                         "only (peft_type 'LORA')")
    for field, value in config.items():
        if field in USED or field in IGNORED:
            continue
        if field not in MUST_BE_OFF:
            if value not in (None, False, [], {}):
                raise ValueError(f"{field}={value!r}: a config field this package does not know "
                                 "(a newer PEFT feature?); it cannot be loaded faithfully here")
        elif value != MUST_BE_OFF[field] and value not in (None, [], {}):
            raise ValueError(f"{field}={value!r} is not supported by load_peft_adapter (it needs "
                             f"{field}={MUST_BE_OFF[field]!r}); load this adapter with PEFT")
    config = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "use_rslora": False,  # PEFT's defaults
              "init_lora_weights": True, "use_dora": False, "target_modules": None, **config}
    config["rank_pattern"] = config.get("rank_pattern") or {}
    saved = list(config.get("modules_to_save") or [])  # PeftModelFor<task> adds its head, as here
    config["modules_to_save"] = saved + [h for h in HEADS.get(config.get("task_type"), ())
                                         if h not in saved] or None
    config["alpha_pattern"] = config.get("alpha_pattern") or {}
    if config.setdefault("bias", "none") not in ("none", "all", "lora_only"):
        raise ValueError(f"bias={config['bias']!r}: PEFT's values are 'none', 'all' and "
                         "'lora_only'")
    init = config["init_lora_weights"]
    if isinstance(init, str) and init.startswith("pissa_niter_"):
        raise ValueError(f"init_lora_weights={init!r} (PiSSA by randomised SVD) is not supported "
                         "by load_peft_adapter: its residual base weights depend on the random "
                         "SVD. Save the adapter from PEFT with init_lora_weights='pissa', or as "
                         "plain LoRA (path_initial_model_for_weight_conversion)")
    if not any(init is value or (isinstance(value, str) and init == value) for value in INITS):
        raise ValueError(f"init_lora_weights={init!r} is not supported by load_peft_adapter: "
                         "such initialisations (PiSSA, OLoRA, CorDA, LoftQ, ...) change the base "
                         f"weights or the layer itself; supported: {INITS}. Load this adapter "
                         "with PEFT, or save it there as plain LoRA "
                         "(path_initial_model_for_weight_conversion)")
    targets = config["target_modules"]
    if targets is None or targets == "all-linear":
        raise ValueError(f"target_modules={targets!r}: PEFT resolves this from the model type "
                         "when it creates an adapter and saves the names it chose; this file names "
                         "none. Write the module names into target_modules")
    return config



def _layer_type_error(name: str, module: nn.Module) -> str | None:
    """Why LoRA from a PEFT file cannot go onto ``module`` here, or None if it can."""
    kind = type(module).__name__
    if isinstance(module, LoRALinear):
        return (f"module '{name}' already has LoRA; load the adapter into the base model "
                "(a fresh one, or merge_and_unload(model) first)")
    if kind == "Conv1D":
        return (f"module '{name}' is a transformers Conv1D (GPT-2 style), whose weight is stored "
                "(in_features, out_features), the transpose of nn.Linear's; replace it by an "
                "nn.Linear holding weight.T and the same bias (notebook 09), then load")
    if isinstance(module, nn.Embedding):
        return f"module '{name}' is an {kind}: embedding LoRA is not supported here"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"module '{name}' is a {kind}: convolution LoRA is not supported here"
    if not isinstance(module, nn.Linear):
        return f"module '{name}' is a {kind}, not an nn.Linear: LoRALinear cannot wrap it"
    return None



def _heads(config: dict, modules: dict[str, nn.Module]) -> list[str]:
    """The modules ``modules_to_save`` names: PEFT's ``key.endswith(name)`` (no dot boundary),
    outermost only."""
    names = config.get("modules_to_save") or []
    found = sorted(n for n in modules if n and any(n.endswith(m) for m in names))
    return [n for n in found if not any(n.startswith(p + ".") for p in found)]



def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        other = " (found adapter_model.bin: PEFT's older pickle format; re-save with " \
                "safe_serialization=True)" if (directory / "adapter_model.bin").is_file() else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(directory)!r}{other}")
    return safetensors_module().load_file(str(weights))



def _split_keys(config: dict, tensors: dict[str, torch.Tensor], heads: list[str]
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``(LoRA tensors per module path, other tensors by parameter path)``; unknown keys refused."""
    suffixes = [".lora_A.weight", ".lora_B.weight"]
    if config["use_dora"]:
        suffixes.append(".lora_magnitude_vector")
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        path = key[len(PREFIX):]
        if key.startswith(PREFIX) and suffix is not None:
            per_module.setdefault(path[:-len(suffix)], {})[suffix] = value
        elif key.startswith(PREFIX) and (
                path.endswith((".base_layer.weight", ".base_layer.bias"))
                or any(path.startswith(h + ".") for h in heads)
                or (config["bias"] != "none" and is_bias(path))):
            extra[path] = value
        else:
            what = ("embedding LoRA (lora_embedding_A/B), which is not supported here: "
                    "only LoRA on linear layers" if "lora_embedding_" in key else
                    "DoRA although use_dora is false" if "lora_magnitude_vector" in key else
                    "a bias although bias='none'" if is_bias(path) else
                    "not a LoRA A/B weight of a linear layer, nor in modules_to_save")
            raise ValueError(f"unexpected tensor {key!r} ({what}); expected keys "
                             f"'{PREFIX}<module path>' + one of {suffixes}")
    return per_module, extra



def _check_layers(config: dict, per_module: dict[str, dict[str, torch.Tensor]],
                  modules: dict[str, nn.Module]) -> dict[str, tuple[int, float]]:
    """Each named module exists, is an ``nn.Linear``, is selected by the config, and its tensors
    have the shapes of its ``(r, alpha)``; returns those per module path."""
    suffixes = [".lora_A.weight", ".lora_B.weight"] + (
        [".lora_magnitude_vector"] if config["use_dora"] else [])
    for name, parts in sorted(per_module.items()):
        if name not in modules:
            raise ValueError(f"the adapter names module '{name}', which the model does not have; "
                             "is this the base model it was trained on (base_model_name_or_path="
                             f"{config.get('base_model_name_or_path')!r})?")
        missing = [s for s in suffixes if s not in parts]
        if missing:
            why = (" (use_dora is true: every DoRA layer has a magnitude vector)"
                   if missing == [".lora_magnitude_vector"] else "")
            raise ValueError(f"module '{name}' lacks {[PREFIX + name + s for s in missing]}{why}")
        problem = _layer_type_error(name, modules[name])
        if problem:
            raise ValueError(problem)
    selected = {n for n in modules if targeted(config, n)
                and not any(n.startswith(p + ".") for p in per_module)}
    if selected != set(per_module):
        raise ValueError(
            f"target_modules={config['target_modules']!r} selects modules without tensors in the "
            f"file: {sorted(selected - set(per_module))}, and the file has tensors for modules it "
            f"does not select: {sorted(set(per_module) - selected)}")
    specs = {}
    for name, parts in per_module.items():
        base = modules[name]
        r, alpha = resolve(config, name)
        expected = {".lora_A.weight": (r, base.in_features),
                    ".lora_B.weight": (base.out_features, r),
                    ".lora_magnitude_vector": (base.out_features,)}
        for suffix, value in parts.items():
            if tuple(value.shape) != expected[suffix]:
                raise ValueError(f"{PREFIX + name + suffix} has shape {tuple(value.shape)}, "
                                 f"expected {expected[suffix]} (r={r} from the config, "
                                 f"{base.in_features} in / {base.out_features} out features)")
        specs[name] = (r, alpha)
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
    kwargs = {"lora_dropout": config["lora_dropout"], "use_rslora": config["use_rslora"],
              "use_dora": bool(config["use_dora"]), "allow_rank_above_features": True,
              "init_lora_weights": "pissa" if config["init_lora_weights"] == "pissa" else True}
    flags = {p: p.requires_grad for p in model.parameters()}
    originals = ({name: modules[name].weight.detach().clone() for name in specs}
                 if kwargs["init_lora_weights"] == "pissa" else {})
    try:  # LoRALinear may still refuse a value (e.g. PiSSA on a low-rank W0) after earlier layers
        wrapped = {name: LoRALinear(modules[name], r=r, lora_alpha=alpha, **kwargs)
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
            parts = per_module[name]
            layer.lora_A.copy_(parts[".lora_A.weight"])  # (r, in)
            layer.lora_B.copy_(parts[".lora_B.weight"])  # (out, r)
            if layer.use_dora:  # the trained m, replacing the row norms it was initialised to
                layer.lora_magnitude_vector.copy_(parts[".lora_magnitude_vector"])  # (out,)
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
    ``save_pretrained`` or by ``save_peft_adapter``), wraps every module the file names in a
    ``LoRALinear`` with the rank, alpha, dropout and rsLoRA setting that PEFT would give it
    (``r``/``lora_alpha`` and ``rank_pattern``/``alpha_pattern``, ``r`` above the layer's
    size included, as PEFT allows), copies the tensors in (cast to the layer's dtype and device:
    float32 adapters on a half-precision base, as PEFT) and freezes everything but LoRA, as
    ``apply_lora`` does. ``init_lora_weights="pissa"``: the base weights become PiSSA's residual
    (the SVD redone, as PEFT does), so load into the original base model. Trained biases
    (``bias="lora_only"``/``"all"``) and ``modules_to_save`` are loaded too and stay trainable,
    as in PEFT. ``exclude_modules``, ``layers_to_transform`` and ``layers_pattern`` select
    modules by PEFT's rules. A targeted layer's ``base_layer.weight`` (PEFT writes it with an
    ``lm_head`` or embedding target) must equal the model's weight.

    Strict: the modules that ``target_modules`` selects (PEFT's rule: a list matches a module
    path or its ``"." + name`` suffix, a string is a regex matched in full) must be exactly the
    modules the tensor file names, each an ``nn.Linear`` without LoRA; every key must be
    ``base_model.model.<path>.lora_A.weight`` / ``.lora_B.weight`` with the shapes
    ``(r, in_features)`` / ``(out_features, r)``, plus ``.lora_magnitude_vector``,
    ``(out_features,)``, on every layer if ``use_dora`` is true and on none if it is false
    (DoRA, arXiv 2402.09353: one config value for all layers, as in PEFT). Anything else raises a
    ``ValueError`` naming it, before the model is changed. The magnitudes are loaded as saved,
    not re-initialised from ``W0``, and stay trainable (PEFT trains them too).
    ``fan_in_fan_out`` is accepted either way: it describes how the *base* layer stores its
    weight (GPT-2's ``Conv1D``), while ``lora_A``/``lora_B`` are stored as ``nn.Linear`` weights
    in both cases; the base modules here must be ``nn.Linear``.

    Args:
        model: the base model the adapter was trained on, without LoRA at the named modules.
        directory: the adapter directory.
    """
    directory = Path(directory)
    config = _read_config(directory)
    tensors = _read_tensors(directory)
    modules = dict(model.named_modules())
    heads = _heads(config, modules)
    per_module, extra = _split_keys(config, tensors, heads)
    specs = _check_layers(config, per_module, modules)
    extra = _check_extras(config, extra, set(per_module), heads, model)
    _apply(model, config, specs, per_module, extra, heads)
    return model
