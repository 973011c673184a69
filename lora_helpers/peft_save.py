"""``save_peft_adapter``: write a model's LoRA layers as PEFT's adapter files (see ``peft_format``)."""

from __future__ import annotations

import json
import numbers
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .inject import lora_layers
from .lora_layer import LoRALayer
from .peft_keys import (CONFIG_NAME, HEADS, PREFIX, TASK_TYPES, WEIGHTS_NAME, is_bias, resolve,
                        safetensors_module, targeted)

__all__ = ["save_peft_adapter"]


def _number(value: numbers.Real) -> int | float:
    """A JSON-friendly Python number (numpy scalars and 16.0-style floats included)."""
    return int(value) if float(value).is_integer() else float(value)



def _one_value(layers: list[tuple[str, LoRALayer]], field: str, get) -> object:
    values = {name: get(layer) for name, layer in layers}
    if len(set(values.values())) > 1:
        raise ValueError(f"PEFT's adapter_config.json has one {field} for all layers, but the "
                         f"layers differ: {values}; adapt them with the same {field}")
    return next(iter(values.values()))



def _dropout(layer: LoRALayer) -> float:
    dropout = getattr(layer, "lora_dropout", None)  # LoRAEmbedding has none
    return dropout.p if isinstance(dropout, nn.Dropout) else 0.0



def _target_modules(model: nn.Module, paths: list[str]) -> list[str] | str:
    """The simplest ``target_modules`` with which PEFT's rule picks exactly ``paths``: short names
    (``["q_proj", "v_proj"]``), else the full paths, else a regex matching only those paths."""
    inside = tuple(p + "." for p in paths)  # the LoRA layers' own children (base, lora_dropout)
    names = [n for n, _ in model.named_modules() if not n.startswith(inside)]
    for targets in (sorted({p.rpartition(".")[2] for p in paths}), sorted(paths)):
        if {n for n in names if targeted({"target_modules": targets}, n)} == set(paths):
            return targets
    return "|".join(re.escape(p) for p in sorted(paths))  # matched in full: exactly these paths



def _patterns(paths: list[str], values: dict[str, object], default: object) -> dict[str, object]:
    """``{"^<path>": value}`` for every layer whose value differs from ``default`` (PEFT's docs
    write full paths this way); exact because the caller checks the result with ``resolve``."""
    return {f"^{p}": values[p] for p in paths if values[p] != default}



def _extras(model: nn.Module, layers: list[tuple[str, LoRALayer]],
            task_type: str | None) -> tuple[str, list[str], dict[str, torch.Tensor]]:
    """What besides LoRA a PEFT file must hold: ``(bias mode, modules_to_save, tensors)``.

    Trainable biases become PEFT's ``bias`` keys (``<path>.base_layer.bias`` in adapted layers,
    ``<path>.bias`` elsewhere), with ``"lora_only"`` if only adapted layers' biases train, else
    ``"all"`` (and then every bias is written, as PEFT does). Every other trainable parameter's
    module, and the task's head (``HEADS``), goes into ``modules_to_save``: all its parameters,
    keyed ``<module path>.<name>`` (PEFT strips its ``modules_to_save.default``).
    """
    adapted = {name for name, _ in layers}
    lora_names = {f"{n}.{p}" for n, layer in layers for p in layer.lora_parameter_names}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n not in lora_names}
    owners = {n.rpartition(".")[0] for n in trainable if not is_bias(n)}
    owners |= {n for n, _ in model.named_modules() if task_type in HEADS and n
               and any(n == h or n.endswith("." + h) for h in HEADS[task_type])}
    inside_lora = sorted(o for o in owners if any(o == a or o.startswith(a + ".") for a in adapted))
    if inside_lora:
        raise ValueError(f"modules {inside_lora} have LoRA and also train other parameters "
                         "(or are the task's head); PEFT's file cannot hold both. Freeze them "
                         "(mark_only_lora_as_trainable) or leave them out of target_modules")
    owners = sorted(o for o in owners if not any(o.startswith(p + ".") for p in owners))
    tensors = {f"{o}.{n}" if o else n: p for o in owners
               for n, p in model.get_submodule(o).named_parameters()}
    biases = sorted(n for n in trainable if is_bias(n) and n not in tensors)
    if not biases:
        return "none", owners, tensors
    lora_only = all(n.rpartition(".")[0] in {f"{a}.base" for a in adapted} for n in biases)
    if not lora_only:  # PEFT's bias="all" writes every bias, trained or not
        biases = sorted(n for n, _ in model.named_parameters() if is_bias(n) and n not in tensors)
    params = dict(model.named_parameters())
    for n in biases:  # an adapted layer's base.bias is PEFT's base_layer.bias
        key = n[:-len(".base.bias")] + ".base_layer.bias" if n.endswith(".base.bias") and \
            n[:-len(".base.bias")] in adapted else n
        tensors[key] = params[n]
    return ("lora_only" if lora_only else "all"), owners, tensors



def _init_value(layers: list[tuple[str, LoRALayer]]) -> bool | str:
    """``"pissa"`` if every layer was initialised by PiSSA, True if none was; mixed is refused.

    PiSSA is part of the model, not only of A and B: PEFT re-runs the SVD on the base weights
    when it loads a ``"pissa"`` file, so the file must say so (and is loaded into the original
    base model)."""
    pissa = [name for name, layer in layers if layer.init_lora_weights == "pissa"]
    if pissa and len(pissa) != len(layers):
        other = [name for name, layer in layers if layer.init_lora_weights != "pissa"]
        raise ValueError(f"layers {pissa} were initialised by PiSSA and {other} were not; "
                         "PEFT's adapter_config.json has one init_lora_weights for all layers. "
                         "Save them as two adapters, or initialise all layers the same way")
    return "pissa" if pissa else True



def save_peft_adapter(model: nn.Module, save_directory: str | Path,
                      base_model_name_or_path: str | None = None,
                      task_type: str | None = None) -> dict:
    """Write the model's LoRA adapter as PEFT does: a JSON config and a safetensors file.

    ``PeftModel.from_pretrained(base_model, save_directory)`` then rebuilds the same adapted
    model from the same base model, and so does ``load_peft_adapter``.

    Args:
        model: a model with LoRA layers (``apply_lora``): linear (DoRA too), embedding and
            conv layers; fused-projection and ``nn.MultiheadAttention`` layers are refused
            (each layer's ``peft_problem()`` says why). Its module paths become the
            tensor keys, so save from the model as it will be given to PEFT (e.g. the whole
            ``LlamaForCausalLM``, not its ``.model``).
        save_directory: created if needed; the two files in it are overwritten.
        base_model_name_or_path: written to the config for the reader (e.g. a Hub id); PEFT
            uses it only when you ask it to load the base model for you.
        task_type: PEFT's task type, e.g. ``"CAUSAL_LM"`` (``PeftModelForCausalLM``), or None.

    Returns:
        The config dict that was written.

    Written as PEFT writes: ``lora_A``/``lora_B`` (and DoRA's magnitude vectors); trainable
    biases under PEFT's ``bias`` (``"lora_only"`` or ``"all"``, keys ``<path>.base_layer.bias``
    in adapted layers and ``<path>.bias`` elsewhere); the modules of every other trainable
    parameter, and for ``SEQ_CLS``/``TOKEN_CLS``/``QUESTION_ANS`` the head PEFT adds
    (``classifier``/``score``/``qa_outputs``), whole under ``modules_to_save`` (keys
    ``<module path>.<parameter>``). ``init_lora_weights`` is ``"pissa"`` if the layers were
    initialised by PiSSA (PEFT then redoes the SVD on the base it loads into, so load into the
    original base model), else True (irrelevant once weights are loaded); mixed PiSSA and
    non-PiSSA layers are refused. ``fan_in_fan_out=False`` (``nn.Linear`` layout). The
    most common rank and alpha become ``r`` and ``lora_alpha``; other layers go into
    ``rank_pattern`` / ``alpha_pattern``. A merged layer is saved too (A and B are unchanged by
    merging). Layers that differ in ``lora_dropout``, ``use_rslora`` or DoRA are refused: the
    config has one value for all of them.
    """
    layers = lora_layers(model)
    problems = {name: layer.peft_problem() for name, layer in layers if layer.peft_problem()}
    if problems:
        raise ValueError("save_peft_adapter cannot write " + "; ".join(
            f"'{name}': {why}" for name, why in problems.items()))
    if not layers:
        raise ValueError("the model has no LoRALinear layers (nor other LoRA layers) to save; call apply_lora(model, "
                         "target_modules=[...]) first")
    if "" in dict(layers):
        raise ValueError("the model itself is a LoRALinear (or another LoRA layer); PEFT's keys need a module path: "
                         "save a model that contains it, e.g. nn.Sequential(layer)")
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"task_type={task_type!r} is not one of PEFT's {TASK_TYPES} (or None)")
    config, extra = _config(model, layers, base_model_name_or_path, task_type)
    tensors = _tensors(layers, extra)
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True),
                                         encoding="utf-8")
    safetensors_module().save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return config


def _config(model: nn.Module, layers: list[tuple[str, LoRALayer]], base_model_name_or_path: str | None,
            task_type: str | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """PEFT's config for ``layers`` and the extra tensors (biases, ``modules_to_save``)."""
    dropout = _one_value(layers, "lora_dropout", _dropout)
    use_rslora = _one_value(layers, "use_rslora", lambda layer: bool(layer.use_rslora))
    use_dora = _one_value(layers, "use_dora", lambda layer: layer.use_dora)
    init = _init_value(layers)
    bias, modules_to_save, extra = _extras(model, layers, task_type)
    paths = [name for name, _ in layers]
    ranks = {name: layer.r for name, layer in layers}
    alphas = {name: _number(layer.lora_alpha) for name, layer in layers}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA", "task_type": task_type, "revision": None, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path, "r": r, "lora_alpha": alpha,
        "lora_dropout": float(dropout), "target_modules": _target_modules(model, paths),
        "rank_pattern": _patterns(paths, ranks, r),
        "alpha_pattern": _patterns(paths, alphas, alpha),
        "use_rslora": use_rslora, "use_dora": use_dora, "init_lora_weights": init,
        "fan_in_fan_out": False, "bias": bias, "modules_to_save": modules_to_save or None,
        "layers_to_transform": None, "layers_pattern": None,
    }
    if any(resolve(config, p) != (ranks[p], alphas[p]) for p in paths):
        # A '.' in "^<path>" matched some other layer: use fully escaped paths instead.
        for key in ("rank_pattern", "alpha_pattern"):
            config[key] = {"^" + re.escape(p[1:]): v for p, v in config[key].items()}
    return config, extra


def _tensors(layers: list[tuple[str, LoRALayer]],
             extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's tensor keys → contiguous CPU tensors: A ``(r, in)``, B ``(out, r)``, DoRA's m ``(out,)``."""
    tensors = {}
    for name, layer in layers:
        key = f"{PREFIX}{name}"
        # lora_A.weight (r, in[, k..]), lora_B.weight (out, r[, 1..]), DoRA's lora_magnitude_vector
        # (out,), an embedding's bare lora_embedding_A (r, n) / lora_embedding_B (d, r)
        for ours, peft_key in layer.peft_tensor_names.items():
            tensors[f"{key}.{peft_key}"] = getattr(layer, ours).detach().cpu().contiguous()
    tensors.update({PREFIX + k: v.detach().cpu().contiguous() for k, v in extra.items()})
    return tensors
