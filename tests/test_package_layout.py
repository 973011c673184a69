"""The package's dependency arrows: the LoRA core never imports its quantized variant, and no
module imports another module's private names."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lora_helpers"
CORE = ("layers", "lora_function", "dora", "pissa", "inject", "_modules", "_checks", "lora_layer")
LAYER_TYPES = ("embedding", "conv", "attention")  # plug in through inject.LORA_WRAPPERS


def imports(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 for alias in node.names]


def test_the_core_does_not_import_quantization():
    for module in CORE:
        assert not [m for m, _ in imports(module) if m in ("quantization", "nf4")], module


def test_no_private_names_cross_modules():
    crossing = [(path.stem, m, name) for path in PACKAGE.glob("*.py")
                for m, name in imports(path.stem) if name.startswith("_")]
    assert crossing == []


def test_the_core_does_not_import_the_other_layer_types():
    for module in CORE:
        assert not [m for m, _ in imports(module) if m in LAYER_TYPES], module


def test_the_core_and_state_name_no_layer_class():
    """lora_layers, merge, state dicts and the PEFT writer and reader use LoRALayer's protocol (and,
    for reading, a table of torch base types), not a list of LoRA classes."""
    for module in CORE + ("state", "peft_save", "peft_load", "_peft_layers", "_peft_read"):
        names = {name for _, name in imports(module)}
        assert not names & {"LoRAEmbedding", "LoRAConv1d", "LoRAConv2d", "LoRAFusedLinear",
                            "LoRAMultiheadAttention"}, module


def test_the_core_does_not_import_its_variants():
    """DoRA registers itself in ``LoRALinear.variants``; the core never imports it."""
    for module in set(CORE) - {"dora"}:
        assert "dora" not in [m for m, _ in imports(module)], module


def test_peft_flag_builds_the_registered_variant_by_keyword_or_position():
    from torch import nn

    from lora_helpers import DoRALinear, LoRALinear, apply_lora

    assert LoRALinear.variants == {"use_dora": DoRALinear}
    assert type(LoRALinear(nn.Linear(4, 3), 2, use_dora=True)) is DoRALinear
    assert type(LoRALinear(nn.Linear(4, 3), 2, 2, 0.0, False, True, True)) is DoRALinear
    assert type(LoRALinear(nn.Linear(4, 3), 2, use_dora=False)) is LoRALinear
    model = apply_lora(nn.Sequential(nn.Linear(4, 3)), ["0"], r=2, use_dora=True)
    assert type(model[0]) is DoRALinear
