"""LoRA+ (create_loraplus_optimizer): PEFT's parameter groups and learning rates."""

import math

import pytest
import torch
from torch import nn

from lora_helpers import TinyTransformerClassifier, apply_lora, create_loraplus_optimizer


def lora_model(**kwargs):
    torch.manual_seed(0)
    model = TinyTransformerClassifier()
    apply_lora(model, ["q_proj", "v_proj"], r=2, **kwargs)
    model.head.requires_grad_(True)                 # a trainable 2-D weight and 1-D bias
    model.blocks[0].ln1.requires_grad_(True)        # LayerNorm: 1-D, no weight decay
    return model


def names(model, optimizer):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [sorted(by_id[id(p)] for p in g["params"]) for g in optimizer.param_groups]


def test_groups_and_learning_rates():
    model = lora_model(use_dora=True)
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16,
                                    loraplus_weight_decay=0.1)
    group_a, embedding, group_b, group_b_no_decay = names(model, opt)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-6, 16e-3, 16e-3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.1, 0.0]
    assert embedding == []
    assert all(n.endswith("lora_A") for n in group_a if "head" not in n) and "head.weight" in group_a
    assert all(n.endswith(("lora_B", "lora_magnitude_vector")) for n in group_b)
    assert sum(n.endswith("lora_magnitude_vector") for n in group_b) == 2 * len(model.blocks)
    assert sorted(group_b_no_decay) == ["blocks.0.ln1.bias", "blocks.0.ln1.weight", "head.bias"]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert sorted(group_a + embedding + group_b + group_b_no_decay) == trainable


def test_one_sgd_step_moves_b_with_ratio_times_the_learning_rate_of_a():
    model = lora_model()
    opt = create_loraplus_optimizer(model, torch.optim.SGD, lr=0.01, loraplus_lr_ratio=4)
    layer = model.blocks[0].attn.q_proj
    with torch.no_grad():
        layer.lora_B.normal_()  # B = 0 would give A no gradient
    model(torch.randn(3, 1, 8, 8)).square().sum().backward()
    a, b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    grad_a, grad_b = layer.lora_A.grad.clone(), layer.lora_B.grad.clone()
    opt.step()
    torch.testing.assert_close(layer.lora_A - a, -0.01 * grad_a)
    torch.testing.assert_close(layer.lora_B - b, -0.04 * grad_b)


@pytest.mark.parametrize("ratio", [2, 16])
def test_groups_equal_peft(ratio):
    loraplus = pytest.importorskip("peft.optimizers")
    model = lora_model(use_dora=True)
    ours = create_loraplus_optimizer(model, torch.optim.AdamW, lr=3e-4, loraplus_lr_ratio=ratio)
    theirs = loraplus.create_loraplus_optimizer(model, torch.optim.AdamW, lr=3e-4,
                                                loraplus_lr_ratio=ratio)
    assert names(model, ours) == names(model, theirs)
    # "foreach" is how torch loops over the tensors (ours True, PEFT's torch's default), not a
    # hyperparameter: tests/test_training.py checks that both give bit-identical weights.
    for g_ours, g_theirs in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in g_ours.items() if k not in ("params", "foreach")} == \
               {k: v for k, v in g_theirs.items() if k not in ("params", "foreach")}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"loraplus_lr_ratio": 0}, ValueError, "loraplus_lr_ratio must be a finite number > 0"),
    ({"loraplus_lr_ratio": -2.0}, ValueError, "loraplus_lr_ratio must be a finite number > 0"),
    ({"loraplus_lr_ratio": math.nan}, ValueError, "loraplus_lr_ratio must be a finite number > 0"),
    ({"loraplus_lr_ratio": "16"}, TypeError, "loraplus_lr_ratio must be a positive number"),
    ({"lr": 0.0}, ValueError, "lr must be a finite number > 0, got 0.0; pass e.g. lr=1e-3"),
    ({"lr": math.inf}, ValueError, "lr must be a finite number > 0"),
    ({"loraplus_lr_ratio": math.inf}, ValueError, "loraplus_lr_ratio must be a finite number > 0"),
    ({"weight_decay": 0.01}, TypeError, "loraplus_weight_decay=0.01"),
    ({"optimizer_cls": nn.Linear}, TypeError, "torch.optim.Optimizer"),
])
def test_bad_input(kwargs, error, match):
    args = {"optimizer_cls": torch.optim.AdamW, "lr": 1e-3, **kwargs}
    with pytest.raises(error, match=match):
        create_loraplus_optimizer(lora_model(), **args)


def test_no_trainable_parameters_is_refused():
    model = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3)
