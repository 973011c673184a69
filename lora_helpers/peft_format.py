"""Hugging Face PEFT's LoRA adapter files, written and read by this package.

``PeftModel.save_pretrained`` writes a directory with two files that matter (and a model card
that does not):

- ``adapter_config.json``: a ``LoraConfig`` as JSON (``peft_type: "LORA"``, ``r``, ``lora_alpha``,
  ``target_modules``, ...). Layers whose rank or alpha differ from ``r`` / ``lora_alpha`` are
  listed in ``rank_pattern`` / ``alpha_pattern``: regular expressions matched against the end of
  the module path, PEFT's rule ``re.match(rf"(.*\\.)?({key})$", path)``, first match wins.
- ``adapter_model.safetensors``: the tensors, keyed ``base_model.model.<module path>.lora_A.weight``
  (shape ``(r, in_features)``) and ``...lora_B.weight`` (shape ``(out_features, r)``), where
  ``<module path>`` is the module's name in the unwrapped model (``model.named_modules()``).
  PEFT's in-memory adapter name (``lora_A.default.weight``) is removed on save. DoRA adds
  ``<module path>.lora_magnitude_vector``, shape ``(out_features,)``.

Field names, defaults and key rules follow PEFT 0.21.2 (``peft/tuners/lora/config.py``,
``peft/utils/save_and_load.py``, ``peft/utils/other.py``). This module imports neither PEFT nor
transformers: only ``json`` and the ``safetensors`` library (the format's own reader and writer).

Besides LoRA's tensors, trained biases (``bias``: ``"lora_only"``/``"all"``) and whole modules
(``modules_to_save``, e.g. a classifier head) are written and read with PEFT's keys, and PiSSA
(``init_lora_weights: "pissa"``), whose SVD is redone on the base model at load time, as PEFT does.

Loading is strict: a config field this package does not implement, set to anything but its
"off" value, is refused with a ``ValueError`` that names the field and the value, and so is any
tensor key, module type or shape that does not fit. Nothing is changed in the model until every
check has passed.
"""

from __future__ import annotations

import json
import numbers
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .inject import _set_submodule, lora_layers, mark_only_lora_as_trainable
from .conv import LoRAConv1d, LoRAConv2d
from .embedding import LoRAEmbedding
from .layers import LoRALinear

__all__ = ["save_peft_adapter", "load_peft_adapter", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"          # peft.utils.constants.CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"   # peft.utils.constants.SAFETENSORS_WEIGHTS_NAME
PREFIX = "base_model.model."                 # PeftModel.base_model (LoraModel) .model
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS",
              "FEATURE_EXTRACTION")          # peft.utils.peft_types.TaskType

# LoraConfig fields (PEFT 0.21.2) that change the model but are not implemented here, with their
# defaults: a file may carry them only at these values (None, [] and {} all count as unset).
_MUST_BE_OFF = {
    "lora_bias": False, "layer_replication": None,
    "target_parameters": None, "trainable_token_indices": None, "megatron_config": None,
    "loftq_config": {}, "eva_config": None, "corda_config": None, "lora_ga_config": None,
    "velora_config": None, "alora_invocation_tokens": None, "use_qalora": False,
    "monteclora_config": None, "use_bdlora": None, "arrow_config": None, "kasa_config": None,
    "ensure_weight_tying": False,
}
# Fields that describe the file or only matter together with an unsupported field; and
# fan_in_fan_out, because lora_A/lora_B have the same layout either way (see load_peft_adapter).
_IGNORED = {"peft_version", "base_model_name_or_path", "revision", "task_type", "inference_mode",
            "auto_mapping", "megatron_core", "qalora_group_size", "runtime_config",
            "fan_in_fan_out"}
_USED = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
         "init_lora_weights", "rank_pattern", "alpha_pattern", "use_dora", "bias",
         "modules_to_save", "exclude_modules", "layers_to_transform", "layers_pattern"}
# init_lora_weights values that only choose A and B's starting values (the file overwrites them),
# and "pissa", whose SVD of the base weights is redone on load, as PEFT does; "pissa_niter_*"
# (a randomised SVD), "olora", "corda", "loftq", ... are not implemented here.
_INITS = (True, False, "gaussian", "orthogonal", "pissa")


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover - safetensors is in requirements.txt
        raise ImportError("PEFT's adapter files need the safetensors library: "
                          "pip install safetensors") from error
    return safetensors.torch


def _pattern_key(patterns: dict, path: str) -> str | None:
    """PEFT's ``get_pattern_key``: the first key whose regex matches the end of ``path``."""
    return next((k for k in patterns if re.match(rf"(.*\.)?({k})$", path)), None)


def _resolve(config: dict, path: str) -> tuple[int, float]:
    """The ``(r, lora_alpha)`` that PEFT gives the module at ``path`` under ``config``."""
    r_key = _pattern_key(config["rank_pattern"], path)
    a_key = _pattern_key(config["alpha_pattern"], path)
    return (config["rank_pattern"][r_key] if r_key is not None else config["r"],
            config["alpha_pattern"][a_key] if a_key is not None else config["lora_alpha"])


def _number(value: numbers.Real) -> int | float:
    """A JSON-friendly Python number (numpy scalars and 16.0-style floats included)."""
    return int(value) if float(value).is_integer() else float(value)


def _one_value(layers: list[tuple[str, LoRALinear]], field: str, get) -> object:
    values = {name: get(layer) for name, layer in layers}
    if len(set(values.values())) > 1:
        raise ValueError(f"PEFT's adapter_config.json has one {field} for all layers, but the "
                         f"layers differ: {values}; adapt them with the same {field}")
    return next(iter(values.values()))


def _dropout(layer: LoRALinear) -> float:
    dropout = getattr(layer, "lora_dropout", None)  # LoRAEmbedding has none
    return dropout.p if isinstance(dropout, nn.Dropout) else 0.0


def _targeted(config: dict, name: str) -> bool:
    """PEFT's ``check_target_module_exists``: exclusions, then a string as a regex in full or a
    list by suffix, the latter filtered by ``layers_to_transform`` / ``layers_pattern``."""
    if _excluded(config, name):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    return any(name.endswith("." + t) for t in targets) and _layer_index_ok(config, name)


def _target_modules(model: nn.Module, paths: list[str]) -> list[str] | str:
    """The simplest ``target_modules`` with which PEFT's rule picks exactly ``paths``: short names
    (``["q_proj", "v_proj"]``), else the full paths, else a regex matching only those paths."""
    inside = tuple(p + "." for p in paths)  # LoRALinear's own children (base, lora_dropout)
    names = [n for n, _ in model.named_modules() if not n.startswith(inside)]
    for targets in (sorted({p.rpartition(".")[2] for p in paths}), sorted(paths)):
        if {n for n in names if _targeted({"target_modules": targets}, n)} == set(paths):
            return targets
    return "|".join(re.escape(p) for p in sorted(paths))  # matched in full: exactly these paths


def _patterns(paths: list[str], values: dict[str, object], default: object) -> dict[str, object]:
    """``{"^<path>": value}`` for every layer whose value differs from ``default`` (PEFT's docs
    write full paths this way); exact because the caller checks the result with ``_resolve``."""
    return {f"^{p}": values[p] for p in paths if values[p] != default}


# Task types whose PeftModel class adds its head to modules_to_save (peft/peft_model.py, 0.21.2).
HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
         "QUESTION_ANS": ("qa_outputs",)}


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def _extras(model: nn.Module, layers: list[tuple[str, LoRALinear]],
            task_type: str | None) -> tuple[str, list[str], dict[str, torch.Tensor]]:
    """What besides LoRA a PEFT file must hold: ``(bias mode, modules_to_save, tensors)``.

    Trainable biases become PEFT's ``bias`` keys (``<path>.base_layer.bias`` in adapted layers,
    ``<path>.bias`` elsewhere), with ``"lora_only"`` if only adapted layers' biases train, else
    ``"all"`` (and then every bias is written, as PEFT does). Every other trainable parameter's
    module, and the task's head (``HEADS``), goes into ``modules_to_save``: all its parameters,
    keyed ``<module path>.<name>`` (PEFT strips its ``modules_to_save.default``).
    """
    adapted = {name for name, _ in layers}
    lora_names = {f"{n}.{p}" for n, layer in layers for p, _ in layer.named_parameters()
                  if p.startswith(("lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_"))}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n not in lora_names}
    owners = {n.rpartition(".")[0] for n in trainable if not _is_bias(n)}
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
    biases = sorted(n for n in trainable if _is_bias(n) and n not in tensors)
    if not biases:
        return "none", owners, tensors
    lora_only = all(n.rpartition(".")[0] in {f"{a}.base" for a in adapted} for n in biases)
    if not lora_only:  # PEFT's bias="all" writes every bias, trained or not
        biases = sorted(n for n, _ in model.named_parameters() if _is_bias(n) and n not in tensors)
    params = dict(model.named_parameters())
    for n in biases:  # an adapted layer's base.bias is PEFT's base_layer.bias
        key = n[:-len(".base.bias")] + ".base_layer.bias" if n.endswith(".base.bias") and \
            n[:-len(".base.bias")] in adapted else n
        tensors[key] = params[n]
    return ("lora_only" if lora_only else "all"), owners, tensors


def _init_value(layers: list[tuple[str, LoRALinear]]) -> bool | str:
    """``"pissa"`` if every layer was initialised by PiSSA, True if none was; mixed is refused.

    PiSSA is part of the model, not only of A and B: PEFT re-runs the SVD on the base weights
    when it loads a ``"pissa"`` file, so the file must say so (and is loaded into the original
    base model)."""
    pissa = [name for name, layer in layers if getattr(layer, "init_lora_weights", True) == "pissa"]
    if pissa and len(pissa) != len(layers):
        other = [name for name, layer in layers if getattr(layer, "init_lora_weights", True) != "pissa"]
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
        model: a model with ``LoRALinear`` layers (``apply_lora``). Its module paths become the
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
    others = [n for n, layer in lora_layers(model)
              if not isinstance(layer, (LoRALinear, LoRAEmbedding, LoRAConv1d, LoRAConv2d))]
    if others:
        raise ValueError(f"save_peft_adapter writes linear, embedding and conv LoRA layers; {others[:3]} "
                         "are fused-projection or nn.MultiheadAttention LoRA layers, which PEFT's "
                         "format does not hold the same way: save them with lora_state_dict(model)")
    odd_convs = [n for n, layer in lora_layers(model) if isinstance(layer, (LoRAConv1d, LoRAConv2d))
                 and (layer.base.padding_mode != "zeros" or set(layer.base.dilation) != {1})]
    if odd_convs:
        raise ValueError(f"convs {odd_convs[:3]} use dilation or a padding mode other than 'zeros'; "
                         "PEFT 0.21.2 builds its lora_A without them, so the same numbers would "
                         "compute a different function there")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers to save; call apply_lora(model, "
                         "target_modules=[...]) first")
    if "" in dict(layers):
        raise ValueError("the model itself is a LoRALinear; PEFT's keys need a module path: "
                         "save a model that contains it, e.g. nn.Sequential(layer)")
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"task_type={task_type!r} is not one of PEFT's {TASK_TYPES} (or None)")
    dropout = _one_value(layers, "lora_dropout", _dropout)
    use_rslora = _one_value(layers, "use_rslora", lambda layer: bool(layer.use_rslora))
    use_dora = _one_value(layers, "use_dora", lambda layer: getattr(layer, "use_dora", False))
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
    if any(_resolve(config, p) != (ranks[p], alphas[p]) for p in paths):
        # A '.' in "^<path>" matched some other layer: use fully escaped paths instead.
        for key in ("rank_pattern", "alpha_pattern"):
            config[key] = {"^" + re.escape(p[1:]): v for p, v in config[key].items()}

    tensors = {}
    for name, layer in layers:
        key = f"{PREFIX}{name}"
        if isinstance(layer, LoRAEmbedding):  # PEFT's embedding factors are bare parameters
            tensors[f"{key}.lora_embedding_A"] = layer.lora_embedding_A.detach().cpu().contiguous()  # (r, n)
            tensors[f"{key}.lora_embedding_B"] = layer.lora_embedding_B.detach().cpu().contiguous()  # (d, r)
            continue
        tensors[f"{key}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()  # (r, in[, k..])
        tensors[f"{key}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()  # (out, r[, 1..])
        if use_dora:
            tensors[f"{key}.lora_magnitude_vector"] = (
                layer.lora_magnitude_vector.detach().cpu().contiguous())  # (out,)
    tensors.update({PREFIX + k: v.detach().cpu().contiguous() for k, v in extra.items()})
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True),
                                         encoding="utf-8")
    _safetensors().save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return config


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
        if field in _USED or field in _IGNORED:
            continue
        if field not in _MUST_BE_OFF:
            if value not in (None, False, [], {}):
                raise ValueError(f"{field}={value!r}: a config field this package does not know "
                                 "(a newer PEFT feature?); it cannot be loaded faithfully here")
        elif value != _MUST_BE_OFF[field] and value not in (None, [], {}):
            raise ValueError(f"{field}={value!r} is not supported by load_peft_adapter (it needs "
                             f"{field}={_MUST_BE_OFF[field]!r}); load this adapter with PEFT")
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
    if not any(init is value or (isinstance(value, str) and init == value) for value in _INITS):
        raise ValueError(f"init_lora_weights={init!r} is not supported by load_peft_adapter: "
                         "such initialisations (PiSSA, OLoRA, CorDA, LoftQ, ...) change the base "
                         f"weights or the layer itself; supported: {_INITS}. Load this adapter "
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


def _layer_index_ok(config: dict, name: str) -> bool:
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


def _excluded(config: dict, name: str) -> bool:
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
    return _safetensors().load_file(str(weights))


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
                or (config["bias"] != "none" and _is_bias(path))):
            extra[path] = value
        else:
            what = ("embedding LoRA (lora_embedding_A/B), which is not supported here: "
                    "only LoRA on linear layers" if "lora_embedding_" in key else
                    "DoRA although use_dora is false" if "lora_magnitude_vector" in key else
                    "a bias although bias='none'" if _is_bias(path) else
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
    targeted = {n for n in modules if _targeted(config, n)
                and not any(n.startswith(p + ".") for p in per_module)}
    if targeted != set(per_module):
        raise ValueError(
            f"target_modules={config['target_modules']!r} selects modules without tensors in the "
            f"file: {sorted(targeted - set(per_module))}, and the file has tensors for modules it "
            f"does not select: {sorted(set(per_module) - targeted)}")
    specs = {}
    for name, parts in per_module.items():
        base = modules[name]
        r, alpha = _resolve(config, name)
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
        _set_submodule(model, name, layer)
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
