"""PEFT's adapter files: names, config fields and the rules that say which module gets what.

Shared by ``peft_save`` (``save_peft_adapter``) and ``peft_load`` (``load_peft_adapter``); the
format itself is described in ``lora_helpers.peft_format``.
"""

from __future__ import annotations

import re

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "PREFIX", "TASK_TYPES", "HEADS", "MUST_BE_OFF", "IGNORED",
           "USED", "INITS", "safetensors_module", "pattern_key", "resolve", "is_bias", "targeted",
           "layer_index_ok", "excluded"]

CONFIG_NAME = "adapter_config.json"          # peft.utils.constants.CONFIG_NAME

WEIGHTS_NAME = "adapter_model.safetensors"   # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME

PREFIX = "base_model.model."                 # PeftModel.base_model (LoraModel) .model

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS",
              "FEATURE_EXTRACTION")          # peft.utils.peft_types.TaskType

# LoraConfig fields (PEFT 0.21.2) that change the model but are not implemented here, with their
# defaults: a file may carry them only at these values (None, [] and {} all count as unset).
MUST_BE_OFF = {
    "lora_bias": False, "layer_replication": None,
    "target_parameters": None, "trainable_token_indices": None, "megatron_config": None,
    "loftq_config": {}, "eva_config": None, "corda_config": None, "lora_ga_config": None,
    "velora_config": None, "alora_invocation_tokens": None, "use_qalora": False,
    "monteclora_config": None, "use_bdlora": None, "arrow_config": None, "kasa_config": None,
    "ensure_weight_tying": False,
}

# Fields that describe the file or only matter together with an unsupported field; and
# fan_in_fan_out, because lora_A/lora_B have the same layout either way (see load_peft_adapter).
IGNORED = {"peft_version", "base_model_name_or_path", "revision", "task_type", "inference_mode",
            "auto_mapping", "megatron_core", "qalora_group_size", "runtime_config",
            "fan_in_fan_out"}

USED = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
         "init_lora_weights", "rank_pattern", "alpha_pattern", "use_dora", "bias",
         "modules_to_save", "exclude_modules", "layers_to_transform", "layers_pattern"}

# init_lora_weights values that only choose A and B's starting values (the file overwrites them),
# and "pissa", whose SVD of the base weights is redone on load, as PEFT does; "pissa_niter_*"
# (a randomised SVD), "olora", "corda", "loftq", ... are not implemented here.
INITS = (True, False, "gaussian", "orthogonal", "pissa")



def safetensors_module():
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover - safetensors is in requirements.txt
        raise ImportError("PEFT's adapter files need the safetensors library: "
                          "pip install safetensors") from error
    return safetensors.torch



def pattern_key(patterns: dict, path: str) -> str | None:
    """PEFT's ``get_pattern_key``: the first key whose regex matches the end of ``path``."""
    return next((k for k in patterns if re.match(rf"(.*\.)?({k})$", path)), None)



def resolve(config: dict, path: str) -> tuple[int, float]:
    """The ``(r, lora_alpha)`` that PEFT gives the module at ``path`` under ``config``."""
    r_key = pattern_key(config["rank_pattern"], path)
    a_key = pattern_key(config["alpha_pattern"], path)
    return (config["rank_pattern"][r_key] if r_key is not None else config["r"],
            config["alpha_pattern"][a_key] if a_key is not None else config["lora_alpha"])

# Task types whose PeftModel class adds its head to modules_to_save (peft/peft_model.py, 0.21.2).
HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
         "QUESTION_ANS": ("qa_outputs",)}



def is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")



def targeted(config: dict, name: str) -> bool:
    """PEFT's ``check_target_module_exists``: exclusions, then a string as a regex in full or a
    list by suffix, the latter filtered by ``layers_to_transform`` / ``layers_pattern``."""
    if excluded(config, name):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    return any(name.endswith("." + t) for t in targets) and layer_index_ok(config, name)



def layer_index_ok(config: dict, name: str) -> bool:
    """PEFT's ``layers_to_transform`` / ``layers_pattern`` filter (``check_target_module_exists``)."""
    indexes = config.get("layers_to_transform")
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return True
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)  # the first numbered segment
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match["idx"])
    return index == indexes if isinstance(indexes, int) else index in indexes



def excluded(config: dict, name: str) -> bool:
    """PEFT's ``exclude_modules`` (a regex in full, or names by suffix) and its rule that LoRA
    never goes on a ``modules_to_save`` module or inside one."""
    exclude = config.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, name):
                return True
        elif name in exclude or any(name.endswith("." + e) for e in exclude):
            return True
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in config.get("modules_to_save") or [])
