"""DoRA (use_dora=True): the row-norm formula, output, gradients, merge, state, PEFT equality."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (LoRALinear, TinyTransformerClassifier, apply_lora, load_lora_state_dict,
                          lora_state_dict, merge_and_unload)
from lora_helpers.dora import weight_norm, weight_norm_reference


def dora_layer(in_f=10, out_f=7, r=3, dtype=torch.float64, seed=0, **kwargs):
    """A DoRA layer with random A, B (ΔW ≠ 0) and a magnitude moved away from its init."""
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(in_f, out_f).to(dtype), r=r, lora_alpha=2 * r,
                       init_lora_weights=False, use_dora=True, **kwargs)
    with torch.no_grad():
        layer.lora_magnitude_vector.mul_(torch.rand(out_f, dtype=dtype) + 0.5)
    return layer


def formula(layer, x):
    """m ⊙ (W0 + s·BA) x / ‖W0 + s·BA‖_row + b, the norm detached, from the matrices."""
    adapted = layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A  # (out, in)
    norm = torch.linalg.norm(adapted, dim=1).detach()  # (out,)
    return x @ (layer.lora_magnitude_vector[:, None] * adapted / norm[:, None]).T + layer.base.bias


@settings(deadline=None, max_examples=40)
@given(out_f=st.integers(1, 20), in_f=st.integers(1, 20), data=st.data(),
       scaling=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_row_norms_from_small_products_equal_the_plain_formula(out_f, in_f, data, scaling, seed):
    r = data.draw(st.integers(1, min(out_f, in_f)))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    a = torch.randn(r, in_f, generator=g, dtype=torch.float64)
    b = torch.randn(out_f, r, generator=g, dtype=torch.float64)
    reference = weight_norm_reference(w, a, b, scaling)
    torch.testing.assert_close(weight_norm(w, a, b, scaling), reference, rtol=1e-9, atol=1e-9 * scaling)
    torch.testing.assert_close(weight_norm(w, a, b, scaling, w.pow(2).sum(1)), reference,
                               rtol=1e-9, atol=1e-9 * scaling)


def test_row_norms_are_per_output_feature_and_fast_path_agrees_in_float32():
    torch.manual_seed(0)
    w, a, b = torch.randn(64, 32), torch.randn(4, 32), torch.randn(64, 4)
    norms = weight_norm(w, a, b, 0.5)
    assert norms.shape == (64,)  # one per row of the (out, in) weight
    torch.testing.assert_close(norms, torch.linalg.norm(w + 0.5 * b @ a, dim=1), rtol=1e-5, atol=1e-5)


def test_magnitude_starts_at_the_row_norms_and_output_equals_base_at_default_init():
    torch.manual_seed(0)
    base = nn.Linear(12, 9)
    layer = LoRALinear(base, r=4, use_dora=True)
    assert layer.lora_magnitude_vector.shape == (9,) and layer.lora_magnitude_vector.requires_grad
    torch.testing.assert_close(layer.lora_magnitude_vector.detach(), base.weight.norm(dim=1))
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), base(x))
    torch.manual_seed(1)
    random = LoRALinear(nn.Linear(12, 9), r=4, init_lora_weights=False, use_dora=True)
    adapted = random.base.weight + random.delta_weight()  # B ≠ 0: m = ‖W0 + ΔW‖, so c = 1
    torch.testing.assert_close(random.lora_magnitude_vector, adapted.norm(dim=1))
    torch.testing.assert_close(random(x), x @ adapted.T + random.base.bias)


@pytest.mark.parametrize("shape", [(5, 10), (2, 3, 10)])
def test_output_and_gradients_equal_the_formula_with_the_norm_detached(shape):
    layer = dora_layer()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [x, layer.lora_A, layer.lora_B, layer.lora_magnitude_vector, layer.base.bias]
    layer.base.bias.requires_grad_(True)
    for forward in (layer, layer.forward_autograd):
        out, ref = forward(x), formula(layer, x)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(out)
        for got, want in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
            torch.testing.assert_close(got, want)


def test_the_norm_receives_no_gradient():
    # With the norm attached, the gradient of A differs: the test would catch a missing detach.
    layer = dora_layer()
    x = torch.randn(5, 10, dtype=torch.float64)
    g = torch.randn(5, 7, dtype=torch.float64)
    adapted = layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A
    attached = x @ (layer.lora_magnitude_vector[:, None] * adapted
                    / torch.linalg.norm(adapted, dim=1)[:, None]).T
    grad_attached = torch.autograd.grad(attached, layer.lora_A, g)[0]
    grad_ours = torch.autograd.grad(layer(x), layer.lora_A, g)[0]
    assert not torch.allclose(grad_ours, grad_attached)
    torch.testing.assert_close(grad_ours, torch.autograd.grad(formula(layer, x), layer.lora_A, g)[0])


def test_hand_written_backward_passes_gradcheck():
    layer = dora_layer(in_f=4, out_f=3, r=2)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    norm = layer.dora_weight_norm()
    from lora_helpers.dora import DoRALinearFunction
    fn = lambda x, a, b, m: DoRALinearFunction.apply(x, layer.base.weight, layer.base.bias, a, b,
                                                     layer.scaling, m, norm)[0]
    assert torch.autograd.gradcheck(fn, (x, layer.lora_A, layer.lora_B, layer.lora_magnitude_vector))


def test_dropout_follows_peft_formula_and_is_identity_in_eval():
    layer = dora_layer(lora_dropout=0.5)
    x = torch.randn(6, 10, dtype=torch.float64)
    layer.eval()
    torch.testing.assert_close(layer(x), formula(layer, x))
    layer.train()
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    xd = layer.lora_dropout(x)
    c = layer.lora_magnitude_vector / layer.dora_weight_norm()
    want = (layer.base(x) + (c - 1) * (xd @ layer.base.weight.T)
            + c * layer.scaling * (xd @ layer.lora_A.T @ layer.lora_B.T))
    torch.testing.assert_close(out, want)


def test_weight_norm_cache_follows_changes_of_w0():
    layer = dora_layer()
    before = layer.dora_weight_norm()
    with torch.no_grad():
        layer.base.weight.mul_(2.0)  # in place: the cache must notice
    torch.testing.assert_close(layer.dora_weight_norm(), weight_norm_reference(
        layer.base.weight, layer.lora_A, layer.lora_B, layer.scaling).detach())
    assert not torch.allclose(before, layer.dora_weight_norm())
    layer.base.weight = nn.Parameter(torch.ones(7, 10, dtype=torch.float64), requires_grad=False)
    torch.testing.assert_close(layer.dora_weight_norm(), weight_norm_reference(
        layer.base.weight, layer.lora_A, layer.lora_B, layer.scaling).detach())


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**16), r=st.integers(1, 5))
def test_merge_equals_unmerged_and_unmerge_restores_w0(seed, r):
    layer = dora_layer(r=r, seed=seed)
    x = torch.randn(4, 10, dtype=torch.float64)
    w0 = layer.base.weight.clone()
    out = layer(x)
    delta = layer.delta_weight().detach()
    torch.testing.assert_close(w0 + delta, (formula(layer, torch.eye(10, dtype=torch.float64))
                                             - layer.base.bias).T)
    layer.merge()
    torch.testing.assert_close(layer(x), out)
    torch.testing.assert_close(layer.delta_weight().detach(), delta)  # from the restorable W0
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0)
    torch.testing.assert_close(layer(x), out)


def test_apply_lora_state_dict_and_merge_and_unload_with_dora():
    torch.manual_seed(0)
    model = TinyTransformerClassifier()
    apply_lora(model, ["q_proj", "v_proj"], r=2, use_dora=True)
    state = lora_state_dict(model)
    magnitudes = [k for k in state if k.endswith("lora_magnitude_vector")]
    assert len(magnitudes) == 2 * len(model.blocks) and len(state) == 3 * len(magnitudes)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(state)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    out = model(x)
    saved = lora_state_dict(model)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for p in fresh.parameters():
            if p.requires_grad:
                p.zero_()
    load_lora_state_dict(fresh, saved)
    torch.testing.assert_close(fresh(x), out)
    torch.testing.assert_close(merge_and_unload(model)(x), out, rtol=1e-5, atol=1e-5)


def test_loading_dora_into_plain_and_plain_into_dora_names_the_fix():
    torch.manual_seed(0)
    dora, plain = TinyTransformerClassifier(), TinyTransformerClassifier()
    apply_lora(dora, ["q_proj"], r=2, use_dora=True)
    apply_lora(plain, ["q_proj"], r=2)
    with pytest.raises(ValueError, match="DoRA adapter.*use_dora=True"):
        load_lora_state_dict(plain, lora_state_dict(dora))
    with pytest.raises(ValueError, match="plain LoRA adapter"):
        load_lora_state_dict(dora, lora_state_dict(plain))


def test_bad_input():
    with pytest.raises(TypeError, match="use_dora"):
        LoRALinear(nn.Linear(4, 4), r=2, use_dora="yes")
    with pytest.raises(ValueError, match="r=5 exceeds"):
        LoRALinear(nn.Linear(4, 8), r=5, use_dora=True)
    base = nn.Linear(4, 3)
    with torch.no_grad():
        base.weight[1] = 0.0
    with pytest.raises(ValueError, match=r"rows \[1\].*use_dora=False"):
        LoRALinear(base, r=2, use_dora=True)


def peft_dora(layer):
    """PEFT's DoRA layer on a copy of ``layer``'s base, with the same A, B and magnitude."""
    peft = pytest.importorskip("peft")
    holder = nn.Module()
    holder.lin = copy.deepcopy(layer.base)
    model = peft.get_peft_model(holder, peft.LoraConfig(r=layer.r, lora_alpha=layer.lora_alpha,
                                                        target_modules=["lin"], use_dora=True))
    theirs = model.base_model.model.lin
    theirs.double()
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(layer.lora_A)
        theirs.lora_B["default"].weight.copy_(layer.lora_B)
        theirs.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude_vector)
    return theirs


def test_dora_equals_peft_output_and_gradients():
    layer = dora_layer(in_f=16, out_f=12, r=4)
    theirs = peft_dora(layer)
    # PEFT's init magnitude equals ours: the row norms of W0 + ΔW (B = 0 there at init)
    x = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 12, dtype=torch.float64)
    ours_out, their_out = layer(x), theirs(x)
    torch.testing.assert_close(ours_out, their_out)
    ours = torch.autograd.grad(ours_out, [x, layer.lora_A, layer.lora_B, layer.lora_magnitude_vector], g)
    their_params = [x, theirs.lora_A["default"].weight, theirs.lora_B["default"].weight,
                    theirs.lora_magnitude_vector["default"].weight]
    for got, want in zip(ours, torch.autograd.grad(their_out, their_params, g)):
        torch.testing.assert_close(got, want)


def test_dora_initial_magnitude_equals_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    holder = nn.Module()
    holder.lin = copy.deepcopy(base)
    model = peft.get_peft_model(holder, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["lin"],
                                                        use_dora=True))
    ours = LoRALinear(base, r=4, lora_alpha=8, use_dora=True)
    torch.testing.assert_close(ours.lora_magnitude_vector,
                               model.base_model.model.lin.lora_magnitude_vector["default"].weight)


def test_dora_is_its_own_class_and_still_a_lora_linear():
    from lora_helpers import DoRALinear
    layer = dora_layer()
    assert type(layer) is DoRALinear and isinstance(layer, LoRALinear) and layer.use_dora
    model = apply_lora(TinyTransformerClassifier(), ["q_proj"], r=2, use_dora=True)
    assert all(type(m) is DoRALinear for m in model.modules() if isinstance(m, LoRALinear))
    plain = LoRALinear(nn.Linear(6, 4), r=2)
    assert type(plain) is LoRALinear and plain.lora_magnitude_vector is None
    assert type(LoRALinear(nn.Linear(6, 4), 2, 2, 0.0, False, True, True)) is DoRALinear  # by position
    with pytest.raises(TypeError, match="use_dora must be True"):
        DoRALinear(nn.Linear(6, 4), r=2, use_dora=False)


def test_weight_norm_cache_follows_a_data_swap():
    layer = dora_layer()
    layer.dora_weight_norm()  # fills the cache
    layer.base.weight.data = torch.randn(7, 10, dtype=torch.float64)  # same Parameter, new data
    torch.testing.assert_close(layer.dora_weight_norm(), weight_norm_reference(
        layer.base.weight, layer.lora_A, layer.lora_B, layer.scaling).detach())


def test_merge_with_a_zero_magnitude_is_refused_and_the_base_untouched():
    layer = dora_layer()
    with torch.no_grad():
        layer.lora_magnitude_vector[2] = 0.0
    w0 = layer.base.weight.clone()
    with pytest.raises(ValueError, match=r"refusing to merge DoRA: rows \[2\]"):
        layer.merge()
    assert torch.equal(layer.base.weight, w0) and not layer.merged


def test_a_merged_dora_state_dict_loads_as_merged_and_unmerges_to_w0():
    layer = dora_layer()
    x = torch.randn(3, 10, dtype=torch.float64)
    w0, expected = layer.base.weight.clone(), layer(x).detach()
    layer.merge()
    fresh = LoRALinear(nn.Linear(10, 7).double(), r=3, lora_alpha=6, use_dora=True)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.merged
    torch.testing.assert_close(fresh(x), expected)
    fresh.unmerge()
    torch.testing.assert_close(fresh.base.weight, w0)
    torch.testing.assert_close(fresh(x), expected)


def test_no_grad_path_equals_the_training_path():
    layer = dora_layer().eval()
    x = torch.randn(4, 10, dtype=torch.float64)
    trained = layer(x).detach()
    with torch.no_grad():
        assert torch.equal(layer(x), trained)
