"""PiSSA (init_lora_weights="pissa"): principal subspace into A and B, residual into the base."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import LoRALinear, low_rank_approximation


@settings(deadline=None, max_examples=30)
@given(out_f=st.integers(1, 16), in_f=st.integers(1, 16), data=st.data(),
       use_rslora=st.booleans(), alpha=st.sampled_from([1, 4, 16]), seed=st.integers(0, 2**16))
def test_output_unchanged_and_update_is_the_best_rank_r_approximation(out_f, in_f, data, use_rslora,
                                                                      alpha, seed):
    r = data.draw(st.integers(1, min(out_f, in_f)))
    torch.manual_seed(seed)
    base = nn.Linear(in_f, out_f).double()
    w0 = base.weight.detach().clone()
    x = torch.randn(5, in_f, dtype=torch.float64)
    before = base(x)
    layer = LoRALinear(base, r=r, lora_alpha=alpha, use_rslora=use_rslora, init_lora_weights="pissa")
    torch.testing.assert_close(layer(x), before)
    u, sigma, vh = torch.linalg.svd(w0, full_matrices=False)
    best = u[:, :r] @ torch.diag(sigma[:r]) @ vh[:r]  # Eckart–Young: the best rank-r approximation
    torch.testing.assert_close(layer.delta_weight(), best)
    torch.testing.assert_close(layer.base.weight, w0 - best)
    torch.testing.assert_close(layer.delta_weight().float(), low_rank_approximation(w0.float(), r),
                               rtol=1e-4, atol=1e-5)  # the package's own truncation (notebook 02)
    # the √S split: A's rows and B's columns carry the same norms, √(σ_i / s)
    torch.testing.assert_close(layer.lora_A.norm(dim=1), layer.lora_B.norm(dim=0))


def test_pissa_update_is_not_the_random_init_and_trains():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 8), r=3, init_lora_weights="pissa")
    assert torch.count_nonzero(layer.lora_B) > 0 and torch.count_nonzero(layer.lora_A) > 0
    layer(torch.randn(4, 12)).sum().backward()
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


def test_pissa_with_dora_keeps_the_output():
    torch.manual_seed(0)
    base = nn.Linear(12, 8)
    x = torch.randn(4, 12)
    before = base(x)
    layer = LoRALinear(base, r=3, init_lora_weights="pissa", use_dora=True)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_rank_deficient_weight_is_refused_and_left_unchanged():
    torch.manual_seed(0)
    base = nn.Linear(10, 8)
    with torch.no_grad():
        base.weight.copy_(torch.randn(8, 2) @ torch.randn(2, 10))  # rank 2
    w0 = base.weight.clone()
    with pytest.raises(ValueError, match="numerical rank 2.*r <= 2"):
        LoRALinear(base, r=3, init_lora_weights="pissa")
    assert torch.equal(base.weight, w0)
    LoRALinear(copy.deepcopy(base), r=2, init_lora_weights="pissa")  # r = rank is fine


def test_pissa_refuses_integer_weights():
    base = nn.Linear(4, 4)
    base.weight = nn.Parameter(torch.ones(4, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises((TypeError, RuntimeError)):
        LoRALinear(base, r=2, init_lora_weights="pissa")


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_equals_peft(use_rslora):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    holder = nn.Module()
    holder.lin = copy.deepcopy(base)
    model = peft.get_peft_model(holder, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["lin"], init_lora_weights="pissa", use_rslora=use_rslora))
    theirs = model.base_model.model.lin
    ours = LoRALinear(base, r=4, lora_alpha=8, init_lora_weights="pissa", use_rslora=use_rslora)
    torch.testing.assert_close(ours.lora_A, theirs.lora_A["default"].weight)
    torch.testing.assert_close(ours.lora_B, theirs.lora_B["default"].weight)
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight)


def test_apply_lora_with_pissa_leaves_the_model_unchanged_when_a_layer_is_refused():
    from lora_helpers import TinyTransformerClassifier, apply_lora
    torch.manual_seed(0)
    model = TinyTransformerClassifier(d_model=16, n_heads=2, n_layers=2)
    with torch.no_grad():  # the second block's v_proj gets rank 1: PiSSA at r=2 is refused there
        model.blocks[1].attn.v_proj.weight.copy_(torch.randn(16, 1) @ torch.randn(1, 16))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="numerical rank 1"):
        apply_lora(model, ["q_proj", "v_proj"], r=2, init_lora_weights="pissa")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
