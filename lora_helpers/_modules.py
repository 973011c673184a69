r"""Finding modules by name and swapping them, shared by ``inject`` (LoRA) and ``quantization`` (NF4).

One implementation of each rule, so the two cannot drift apart:

- ``target_matcher``: PEFT's rule for ``target_modules``. A list matches a module whose qualified
  name equals an entry or ends with ``"." + entry`` (``["q_proj"]`` matches
  ``"blocks.0.attn.q_proj"``, not ``"blocks.0.attn.xq_proj"``); one string is a regular
  expression that must match the whole qualified name (``re.fullmatch``).
- ``attention_out_projs``: the ``out_proj`` of every ``nn.MultiheadAttention``, which that
  module reads as a weight and never calls, so wrapping or replacing it silently does nothing.
- ``set_submodule``: put a module at a qualified name.
- ``replace_with_rollback``: build every replacement first, then swap them in; if anything
  raises (a refused argument, an SVD that does not converge, ...), every parameter, buffer and
  ``requires_grad`` flag of the model is put back as it was, and the exception propagates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["matches", "target_matcher", "attention_out_projs", "set_submodule",
           "replace_with_rollback"]


def matches(name: str, target: str) -> bool:
    """PEFT's suffix rule: ``name`` is ``target`` or ends with ``"." + target``."""
    return name == target or name.endswith("." + target)


def target_matcher(target_modules: str | Iterable[str],
                   what: str = "target_modules") -> tuple[list[str], Callable[[str, str], bool]]:
    """``(targets, match)``: a string is one regex matched in full, a list is matched by suffix.

    ``match(name, target)`` says whether the qualified module name ``name`` is selected by the
    entry ``target`` of ``targets``. Raises a ``TypeError`` for an empty or non-string target and
    a ``ValueError`` for an invalid regex.
    """
    if isinstance(target_modules, str):
        if not target_modules:
            raise TypeError(f"{what} must be a non-empty list of module names (or one regex "
                            f"string), got ''; e.g. {what}=['q_proj']")
        try:
            pattern = re.compile(target_modules)
        except re.error as error:
            raise ValueError(f"{what}={target_modules!r} is a string, which PEFT reads as a "
                             f"regular expression, and it is not a valid one ({error}); for module "
                             "names pass a list, e.g. ['q_proj']") from None
        return [target_modules], lambda name, _target: pattern.fullmatch(name) is not None
    targets = list(target_modules) if isinstance(target_modules, Iterable) else []
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise TypeError(f"{what} must be a non-empty list of module names (or one regex "
                        f"string), got {target_modules!r}; e.g. {what}=['q_proj', 'v_proj']")
    return targets, matches


def attention_out_projs(model: nn.Module) -> set[str]:
    """Qualified names of the ``out_proj`` of every ``nn.MultiheadAttention`` in ``model``."""
    return {f"{name}.out_proj" if name else "out_proj"
            for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)}


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the qualified name ``name`` inside ``model``.

    The root (``name == ""``) cannot be replaced in place: the caller holds ``model`` itself, so
    a ``ValueError`` says to use the returned module instead.
    """
    if not name:
        raise ValueError("cannot replace the model itself in place (its qualified name is ''); "
                         "wrap or convert the single layer directly and use the result")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def replace_with_rollback(model: nn.Module, names: Iterable[str],
                          build: Callable[[nn.Module], nn.Module]) -> dict[str, nn.Module]:
    """Replace each module ``model.get_submodule(name)`` by ``build(module)``, all or nothing.

    Every replacement is built before any is swapped in. ``build`` may change the old module
    (freeze it, write a PiSSA residual into its weight): if it raises, for any layer, every
    parameter and buffer value and every ``requires_grad`` flag of ``model`` is restored, no
    module is swapped, and the exception is re-raised unchanged.

    Returns ``{name: new module}``.
    """
    names = list(names)
    flags = {p: p.requires_grad for p in model.parameters()}
    touched = [model.get_submodule(name) for name in names]
    saved = [{key: value.detach().clone() for key, value in module.state_dict(keep_vars=True).items()
              if isinstance(value, torch.Tensor)} for module in touched]
    try:
        new = {name: build(module) for name, module in zip(names, touched)}
    except BaseException:
        with torch.no_grad():
            for module, state in zip(touched, saved):
                current = module.state_dict(keep_vars=True)
                for key, value in state.items():
                    current[key].copy_(value)
        for param, flag in flags.items():
            param.requires_grad_(flag)
        raise
    for name, module in new.items():
        set_submodule(model, name, module)
    return new
