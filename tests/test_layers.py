"""LoRALinear: initialisation, forward, scaling, merging, dtypes and bad input."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import LoRALinear, LoRALinearFunction


def make_layer(in_f=16, out_f=12, **kwargs):
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(in_f, out_f), **kwargs)


def test_wraps_the_base_layer_without_copying_and_freezes_it():
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=4)
    assert layer.base is base
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (12, 4)
    assert (layer.in_features, layer.out_features, layer.r) == (16, 12, 4)


def test_output_equals_base_exactly_at_init():
    layer = make_layer(r=4)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), layer.base(x))
    assert torch.count_nonzero(layer.lora_B) == 0


@pytest.mark.parametrize("in_f", [8, 64, 1000])
def test_default_init_a_inside_kaiming_bound_and_b_zero(in_f):
    layer = make_layer(in_f=in_f, out_f=8, r=8)
    bound = 1 / math.sqrt(in_f)
    assert layer.lora_A.abs().max() <= bound
    # The samples fill the range: with 8*in_f uniform draws the max is close to the bound.
    assert layer.lora_A.abs().max() > 0.9 * bound
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))


def test_gaussian_init_has_std_one_over_r():
    layer = LoRALinear(nn.Linear(4096, 64), r=4, init_lora_weights="gaussian")
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
    assert abs(layer.lora_A.std().item() - 1 / 4) < 0.01
    # Gaussian, not uniform: values beyond the kaiming bound appear.
    assert layer.lora_A.abs().max() > 1 / math.sqrt(4096)


def test_init_false_makes_delta_nonzero():
    layer = make_layer(r=4, init_lora_weights=False)
    assert layer.delta_weight().abs().sum() > 0
    x = torch.randn(3, 16)
    assert not torch.allclose(layer(x), layer.base(x))


@pytest.mark.parametrize("r,alpha,rslora,expected", [
    (8, 8, False, 1.0), (4, 16, False, 4.0), (16, 8, False, 0.5),
    (4, 8, True, 4.0), (16, 8, True, 2.0), (9, 3, True, 1.0),
])
def test_scaling(r, alpha, rslora, expected):
    layer = make_layer(in_f=32, out_f=32, r=r, lora_alpha=alpha, use_rslora=rslora)
    assert layer.scaling == pytest.approx(expected)


def test_forward_matches_formula_and_delta_weight():
    layer = make_layer(r=4, lora_alpha=12, init_lora_weights=False)
    x = torch.randn(2, 3, 16)
    expected = x @ layer.base.weight.T + layer.base.bias + 3.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.delta_weight(), 3.0 * layer.lora_B @ layer.lora_A)
    assert torch.allclose(layer(x), x @ (layer.base.weight + layer.delta_weight()).T + layer.base.bias,
                          atol=1e-5)


def test_forward_never_forms_the_full_delta(monkeypatch):
    layer = make_layer(r=4, init_lora_weights=False)
    monkeypatch.setattr(LoRALinear, "delta_weight", lambda self: pytest.fail("formed B @ A"))
    layer(torch.randn(3, 16))


def test_dropout_only_on_lora_path():
    layer = make_layer(r=4, lora_dropout=0.5, init_lora_weights=False)
    x = torch.randn(64, 16)
    layer.eval()
    assert torch.allclose(layer(x), x @ (layer.base.weight + layer.delta_weight()).T + layer.base.bias,
                          atol=1e-5)
    layer.train()
    torch.manual_seed(1)
    y1 = layer(x)
    torch.manual_seed(2)
    assert not torch.allclose(y1, layer(x))
    with torch.no_grad():
        layer.lora_B.zero_()
    assert torch.equal(layer(x), layer.base(x))  # dropout never touches the base path


@settings(deadline=None, max_examples=25)
@given(in_f=st.integers(1, 24), out_f=st.integers(1, 24), data=st.data(),
       batch=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       alpha=st.floats(0.5, 32), rslora=st.booleans())
def test_merged_unmerged_outputs_agree(in_f, out_f, data, batch, alpha, rslora):
    r = data.draw(st.integers(1, min(in_f, out_f)))
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(in_f, out_f), r=r, lora_alpha=alpha, use_rslora=rslora,
                       init_lora_weights=False)
    x = torch.randn(*batch, in_f)
    w0 = layer.base.weight.clone()
    y = layer(x)
    assert y.shape == (*batch, out_f)
    layer.merge()
    assert layer.merged
    assert torch.allclose(layer(x), y, atol=1e-5)
    assert torch.allclose(layer.forward_autograd(x), y, atol=1e-5)  # the reference path too
    assert torch.allclose(layer.base.weight, w0 + layer.delta_weight(), atol=1e-6)
    layer.unmerge()
    assert not layer.merged
    assert torch.allclose(layer(x), y, atol=1e-5)
    assert torch.allclose(layer.base.weight, w0, atol=1e-6)


def test_double_merge_warns_and_changes_nothing():
    layer = make_layer(r=4, init_lora_weights=False)
    layer.merge()
    w = layer.base.weight.clone()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, w) and layer.merged


def test_unmerge_unmerged_warns_and_changes_nothing():
    layer = make_layer(r=4, init_lora_weights=False)
    w = layer.base.weight.clone()
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, w) and not layer.merged


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_merge_refuses_non_finite_and_leaves_weights(bad):
    layer = make_layer(r=4, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_B[0, 0] = bad
    w = layer.base.weight.clone()
    with pytest.raises(ValueError, match="NaN or inf"):
        layer.merge()
    assert torch.equal(layer.base.weight, w) and not layer.merged


def test_only_lora_parameters_change_after_training_steps():
    layer = make_layer(r=4)
    w0, b0, a0 = layer.base.weight.clone(), layer.base.bias.clone(), layer.lora_A.clone()
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    x, target = torch.randn(32, 16), torch.randn(32, 12)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        opt.step()
    assert torch.equal(layer.base.weight, w0) and torch.equal(layer.base.bias, b0)
    assert not torch.equal(layer.lora_A, a0)
    assert layer.lora_B.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bases(dtype):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 16).to(dtype), r=4, init_lora_weights=False)
    # as PEFT (autocast_adapter_dtype=True): float32 adapters on a half-precision base
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    x = torch.randn(8, 32, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = x.float() @ (layer.base.weight.float() + layer.delta_weight().float()).T + layer.base.bias.float()
    assert torch.allclose(y.float(), ref, atol=0.1, rtol=0.05)
    y.float().sum().backward()
    assert layer.lora_A.grad is not None and layer.base.weight.grad is None
    layer.merge()
    assert torch.allclose(layer(x).float(), y.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"r": 0}, ValueError, "r=0 is out of range: need r >= 1"),
    ({"r": -2}, ValueError, "r=-2 is out of range: need r >= 1"),
    ({"r": 2.0}, TypeError, r"r must be an int, got 2.0 \(float\); pass a whole number, e.g. r=2"),
    ({"r": True}, TypeError, "r must be an int, got True"),
    ({"r": 13}, ValueError, r"r=13 exceeds min\(in_features, out_features\)"),
    ({"lora_alpha": 0}, ValueError, "lora_alpha must be a finite number > 0"),
    ({"lora_alpha": -1.5}, ValueError, "lora_alpha must be a finite number > 0"),
    ({"lora_alpha": float("nan")}, ValueError, "lora_alpha must be a finite number > 0"),
    ({"lora_alpha": float("inf")}, ValueError, "lora_alpha must be a finite number > 0"),
    ({"use_rslora": "no"}, TypeError, "use_rslora must be True or False, got 'no'"),
    ({"use_rslora": 1}, TypeError, "use_rslora must be True or False"),
    ({"lora_alpha": "8"}, TypeError, "lora_alpha must be a positive number"),
    ({"lora_dropout": 1.0}, ValueError, r"lora_dropout must be in \[0, 1\)"),
    ({"lora_dropout": -0.1}, ValueError, r"lora_dropout must be in \[0, 1\)"),
    ({"init_lora_weights": "kaiming"}, ValueError, "init_lora_weights must be True, False, 'gaussian' or 'pissa'"),
    ({"init_lora_weights": 1}, ValueError, "init_lora_weights must be"),
])
def test_bad_arguments(kwargs, exc, match):
    base = nn.Linear(16, 12)
    w = base.weight.clone()
    with pytest.raises(exc, match=match):
        LoRALinear(base, **kwargs)
    assert base.weight.requires_grad and torch.equal(base.weight, w)  # untouched


def test_bad_base():
    with pytest.raises(TypeError, match="base must be an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="already has LoRA"):
        LoRALinear(make_layer(r=2))


@pytest.mark.parametrize("forward", ["__call__", "forward_autograd"])
def test_bad_inputs_to_forward(forward):
    layer = make_layer(r=4)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 16\), got \(3, 15\)"):
        getattr(layer, forward)(torch.randn(3, 15))
    with pytest.raises(TypeError, match="input dtype torch.float64"):
        getattr(layer, forward)(torch.randn(3, 16, dtype=torch.float64))


def test_no_warnings_in_normal_use():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = make_layer(r=4, lora_dropout=0.1)
        layer(torch.randn(2, 16)).sum().backward()
        layer.merge()
        layer.unmerge()


# --- The hand-written backward (LoRALinearFunction) against autograd's ---------------------------

def _function_inputs(n=5, in_f=6, out_f=4, r=2, bias=True, dropped=True):
    """float64 leaves for LoRALinearFunction, every one of them requiring grad."""
    torch.manual_seed(0)
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return (make(n, in_f), make(n, in_f) if dropped else None, make(out_f, in_f),
            make(out_f) if bias else None, make(r, in_f), make(out_f, r), 1.7)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropped", [True, False])
def test_function_gradients_pass_gradcheck(bias, dropped):
    # Finite differences against every gradient formula, including the trainable-base ones.
    inputs = _function_inputs(bias=bias, dropped=dropped)
    assert torch.autograd.gradcheck(LoRALinearFunction.apply, inputs)


def test_function_computes_only_the_gradients_asked_for():
    x, xd, w, b, a, bb, s = _function_inputs()
    x.requires_grad_(False)
    w.requires_grad_(False)
    y, h = LoRALinearFunction.apply(x, xd, w, b, a, bb, s)
    assert not h.requires_grad  # H is handed out for the backward pass only
    y.sum().backward()
    assert x.grad is None and w.grad is None
    assert all(t.grad is not None for t in (xd, b, a, bb))


def _all_grads(layer, x):
    tensors = (x, layer.lora_A, layer.lora_B, layer.base.weight, layer.base.bias)
    return [None if t is None or t.grad is None else t.grad.clone() for t in tensors]


@settings(deadline=None, max_examples=30)
@given(in_f=st.integers(1, 12), out_f=st.integers(1, 12), data=st.data(),
       batch=st.lists(st.integers(1, 3), min_size=0, max_size=3),
       dropout=st.sampled_from([0.0, 0.3]), train_base=st.booleans(), bias=st.booleans(),
       x_grad=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_and_gradients_equal_autograd_reference(in_f, out_f, data, batch, dropout,
                                                        train_base, bias, x_grad, seed):
    # forward (hand-written backward) and forward_autograd (autograd's backward) must agree on the
    # output and on every gradient: any leading dims, dropout, trainable base, no bias, leaf input.
    r = data.draw(st.integers(1, min(in_f, out_f)))
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(in_f, out_f, bias=bias), r=r, lora_alpha=3, lora_dropout=dropout,
                       init_lora_weights=False)
    layer.base.requires_grad_(train_base)
    x0 = torch.randn(*batch, in_f)
    weights = torch.randn(*batch, out_f)
    results = []
    for forward in (layer.forward, layer.forward_autograd):
        x = x0.clone().requires_grad_(x_grad)
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same dropout mask for both
        y = forward(x)
        (y * weights).sum().backward()
        results.append((y.detach(), _all_grads(layer, x)))
    (y1, g1), (y2, g2) = results
    assert y1.shape == y2.shape == (*batch, out_f)
    assert torch.allclose(y1, y2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_forward_hooks_and_subclassed_bases_are_honoured():
    layer = make_layer(r=4, init_lora_weights=False)
    x = torch.randn(3, 16)
    expected = layer(x)
    calls = []
    handle = layer.base.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    assert torch.allclose(layer(x), expected, atol=1e-6) and calls == [(3, 12)]
    handle.remove()

    class DoubledLinear(nn.Linear):  # a subclass with its own forward must not be bypassed
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    doubled = LoRALinear(DoubledLinear(16, 12), r=4, init_lora_weights=False)
    delta = x @ doubled.delta_weight().T
    assert torch.allclose(doubled(x), 2 * nn.functional.linear(x, doubled.base.weight, doubled.base.bias)
                          + delta, atol=1e-5)


def test_flop_counter_sees_every_product():
    # FlopCounterMode must count the in-place LoRA products too (it has no rule for addmm_), so
    # FLOP counts of LoRALinear are the textbook ones: forward 2n(dk + r(d+k)), backward with a
    # frozen base 2n(dk + 2r(d+k)), the same as for the autograd reference.
    from torch.utils.flop_counter import FlopCounterMode
    n, k, d, r = 6, 16, 12, 4
    layer = make_layer(in_f=k, out_f=d, r=r, init_lora_weights=False)
    x = torch.randn(n, k, requires_grad=True)
    counts = []
    for forward in (layer.forward, layer.forward_autograd):
        with FlopCounterMode(display=False) as forward_only:
            y = forward(x)
        with FlopCounterMode(display=False) as backward_only:
            y.sum().backward()
        counts.append((forward_only.get_total_flops(), backward_only.get_total_flops()))
    assert counts[0] == counts[1] == (2 * n * (d * k + r * (d + k)), 2 * n * (d * k + 2 * r * (d + k)))


def test_second_order_gradients_need_forward_autograd():
    layer = make_layer(r=4, init_lora_weights=False)
    x = torch.randn(5, 16, requires_grad=True)
    (grad_x,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # refused loudly, not wrong
        grad_x.sum().backward()
    (grad_x,) = torch.autograd.grad(layer.forward_autograd(x).pow(2).sum(), x, create_graph=True)
    grad_x.sum().backward()  # the autograd version supports it
    assert layer.lora_A.grad is not None and layer.lora_B.grad.abs().sum() > 0


def test_torch_func_grad_works_and_vmap_needs_forward_autograd():
    # torch.func.grad (functional gradients, as in JAX) goes through the hand-written backward;
    # vmap is not supported and says so; forward_autograd works there.
    layer = make_layer(r=4, init_lora_weights=False)
    params = {k: v.detach() for k, v in layer.named_parameters() if v.requires_grad}
    x = torch.randn(6, 16)

    def loss(p, inputs, module=layer):
        return torch.func.functional_call(module, p, (inputs,)).tanh().pow(2).sum()

    grads = torch.func.grad(loss)(params, x)
    layer(x).tanh().pow(2).sum().backward()
    assert grads.keys() == {"lora_A", "lora_B"}
    assert all(torch.allclose(grads[k], getattr(layer, k).grad, atol=1e-6) for k in grads)

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))
    with pytest.raises(RuntimeError, match="does not have vmap support"):
        per_sample(params, x[:, None])

    class ViaAutograd(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inputs):
            return self.inner.forward_autograd(inputs)

    wrapped = ViaAutograd(layer)
    grads_each = torch.func.vmap(torch.func.grad(lambda p, xi: loss(p, xi, wrapped)), in_dims=(None, 0))(
        {f"inner.{k}": v for k, v in params.items()}, x[:, None])
    assert grads_each["inner.lora_A"].shape == (6, 4, 16)
    assert torch.allclose(grads_each["inner.lora_A"].sum(0), grads["lora_A"], atol=1e-5)


# ---- mixed precision (issue 21 §3) -------------------------------------------------------------

def test_stacked_layers_run_under_cpu_autocast_forward_and_backward():
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(nn.Linear(16, 12), r=2, init_lora_weights=False),
                          LoRALinear(nn.Linear(12, 8), r=2, init_lora_weights=False,
                                     use_dora=True))
    x = torch.randn(5, 16)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), reference, atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_base_output_is_peft_formula_in_float32_then_cast(dtype):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 16).to(dtype), r=4, init_lora_weights=False)
    x = torch.randn(8, 32, dtype=dtype)
    # PEFT: result = base(x); result + s * B(A(x.to(fp32))), in fp32; .to(result dtype)
    expected = (layer.base(x) + layer.scaling * (x.float() @ layer.lora_A.T @ layer.lora_B.T)
                ).to(dtype)
    assert torch.equal(layer(x), expected)
    with pytest.raises(TypeError, match=f"input dtype torch.float32 differs.*{dtype}"):
        layer(x.float())


def test_bf16_merge_unmerge_cycles_keep_w0_close():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 48).to(torch.bfloat16), r=4, init_lora_weights=False)
    w0 = layer.base.weight.detach().clone()
    for _ in range(10):
        layer.merge()
        layer.unmerge()
    # each merge and each unmerge rounds once to bf16 (unit roundoff 2^-8): 20 roundings at most
    bound = 20 * 2.0 ** -8 * (w0.float().abs() + layer.delta_weight().detach().abs())
    assert ((layer.base.weight.float() - w0.float()).abs() <= bound).all()
    assert (layer.base.weight.float() - w0.float()).norm() / w0.float().norm() < 5e-3
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    unmerged = layer(x)
    layer.merge()
    assert torch.allclose(layer(x).float(), unmerged.float(), atol=0.05, rtol=0.02)


def test_weight_and_bias_are_read_only_views_of_the_base():
    base = nn.Linear(6, 4)
    layer = LoRALinear(base, r=2)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert set(layer.state_dict()) == {"base.weight", "base.bias", "lora_A", "lora_B"}  # unmerged
    with pytest.raises((AttributeError, KeyError)):  # nn.Module refuses to shadow the property
        layer.weight = nn.Parameter(torch.zeros(4, 6))
    assert LoRALinear(nn.Linear(6, 4, bias=False), r=2).bias is None


def test_rank_above_features_only_when_allowed():
    with pytest.raises(ValueError, match="allow_rank_above_features=True"):
        LoRALinear(nn.Linear(8, 3), r=4)
    layer = LoRALinear(nn.Linear(8, 3), r=4, allow_rank_above_features=True,
                       init_lora_weights=False)
    assert layer.lora_A.shape == (4, 8) and layer(torch.randn(2, 8)).shape == (2, 3)


def test_pissa_layer_remembers_its_init_and_refuses_reinitialising():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), r=2, init_lora_weights=False)
    assert layer.init_lora_weights is False
    layer.reset_lora_parameters("pissa")  # a random layer may become PiSSA (notebook 08)
    assert layer.init_lora_weights == "pissa"
    x = torch.randn(3, 8)
    before, state = layer(x), {k: v.clone() for k, v in layer.state_dict().items()}
    for init in (True, "pissa"):
        with pytest.raises(ValueError, match="cannot re-initialise a PiSSA layer"):
            layer.reset_lora_parameters(init)
    assert torch.equal(layer(x), before)
    assert all(torch.equal(v, state[k]) for k, v in layer.state_dict().items())


def test_a_meta_base_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        LoRALinear(nn.Linear(8, 6, device="meta"), r=2)


@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 16)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_no_grad_path_equals_the_training_path(shape, dropout):
    layer = make_layer(r=4, init_lora_weights=False, lora_dropout=dropout).eval()
    x = torch.randn(*shape)
    trained = layer(x)  # gradients recorded: LoRALinearFunction through autograd
    with torch.no_grad():
        fast = layer(x)
    assert torch.equal(fast, trained.detach()) and not fast.requires_grad
    torch.testing.assert_close(fast, layer.forward_autograd(x).detach())


def test_no_grad_path_skips_autograd_function(monkeypatch):
    layer = make_layer(r=4, init_lora_weights=False)
    calls = []
    monkeypatch.setattr(LoRALinearFunction, "apply", lambda *a: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("autograd.Function used under no_grad")))
    with torch.no_grad():
        layer(torch.randn(3, 16))
    assert calls == []


def test_a_merged_state_dict_loads_as_merged_and_is_not_added_twice():
    layer = make_layer(r=4, init_lora_weights=False)
    x = torch.randn(3, 16)
    expected = layer(x).detach()
    layer.merge()
    state = layer.state_dict()
    fresh = LoRALinear(nn.Linear(16, 12), r=4)
    fresh.load_state_dict(state)
    assert fresh.merged
    torch.testing.assert_close(fresh(x), expected)
    fresh.unmerge()
    torch.testing.assert_close(fresh(x), expected)
    torch.testing.assert_close(fresh.base.weight, layer.base.weight - layer.delta_weight())


def test_forward_pre_hooks_of_the_base_are_honoured():
    layer = make_layer(r=4, init_lora_weights=False)
    x = torch.randn(3, 16)
    handle = layer.base.register_forward_pre_hook(lambda module, args: (2 * args[0],))
    # the hook doubles what the base sees; the LoRA path still sees x
    want = layer.base(x) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(layer(x), want)
    handle.remove()
    assert not torch.allclose(layer(x), want)
