"""Reading PEFT's adapter directory: the config (checked field by field against what this
package implements) and the tensors, split into LoRA tensors per module and the rest. Nothing
here looks at the model's layers (``_peft_layers`` and ``peft_load`` do)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._peft_layers import SUFFIXES
from .peft_keys import (CONFIG_NAME, HEADS, IGNORED, INITS, MUST_BE_OFF, PREFIX, USED, WEIGHTS_NAME,
                        is_bias, safetensors_module)

__all__ = ["read_config", "read_tensors", "find_heads", "split_keys"]


def read_config(directory: Path) -> dict:
    """``adapter_config.json`` as a dict with PEFT's defaults filled in, or a ValueError naming
    the field and value this package cannot load faithfully (or FileNotFoundError)."""
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


def find_heads(config: dict, modules: dict[str, nn.Module]) -> list[str]:
    """The modules ``modules_to_save`` names: PEFT's ``key.endswith(name)`` (no dot boundary),
    outermost only."""
    names = config.get("modules_to_save") or []
    found = sorted(n for n in modules if n and any(n.endswith(m) for m in names))
    return [n for n in found if not any(n.startswith(p + ".") for p in found)]


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """``adapter_model.safetensors``: PEFT key → tensor."""
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        other = " (found adapter_model.bin: PEFT's older pickle format; re-save with " \
                "safe_serialization=True)" if (directory / "adapter_model.bin").is_file() else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(directory)!r}{other}")
    return safetensors_module().load_file(str(weights))


def split_keys(config: dict, tensors: dict[str, torch.Tensor], heads: list[str]
               ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``(LoRA tensors per module path, other tensors by parameter path)``; unknown keys refused.

    A LoRA key is ``base_model.model.<module path>`` + one of ``SUFFIXES``; whether they fit the
    module's type is checked later (``_peft_layers.check_tensors``). The rest must be a targeted
    layer's ``base_layer.weight``/``.bias``, a ``modules_to_save`` module's tensor, or a bias
    (``bias`` not ``"none"``).
    """
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        path = key[len(PREFIX):]
        if key.startswith(PREFIX) and suffix is not None:
            per_module.setdefault(path[:-len(suffix)], {})[suffix] = value
        elif key.startswith(PREFIX) and (
                path.endswith((".base_layer.weight", ".base_layer.bias"))
                or any(path.startswith(h + ".") for h in heads)
                or (config["bias"] != "none" and is_bias(path))):
            extra[path] = value
        else:
            what = ("a bias although bias='none'" if is_bias(path) else
                    "not a LoRA tensor of a linear, embedding or conv layer, nor in "
                    "modules_to_save")
            raise ValueError(f"unexpected tensor {key!r} ({what}); expected keys "
                             f"'{PREFIX}<module path>' + one of {list(SUFFIXES)}")
    return per_module, extra
