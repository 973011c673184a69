"""apply_lora, freezing, merging, unloading and disabling on whole models."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (LoRALinear, apply_lora, count_parameters, disable_lora, lora_layers,
                          mark_only_lora_as_trainable, merge_and_unload, merge_lora, unmerge_lora)


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):  # (batch, seq, d)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.out_proj(att @ v)


class Tiny(nn.Module):
    def __init__(self, d=8, n_layers=2):
        super().__init__()
        self.layers = nn.ModuleList(Attention(d) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return self.head(self.norm(x).mean(1))


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return Tiny(**kwargs)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, \
        {n: p.requires_grad for n, p in model.named_parameters()}, repr(model)


def randomize_lora(model):
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_()


def test_apply_lora_replaces_targets_by_suffix_and_freezes_the_rest():
    model = make_model()
    out = apply_lora(model, ["q_proj", "v_proj"], r=2)
    assert out is model
    names = [n for n, _ in lora_layers(model)]
    assert names == ["layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{m}" for n in names for m in "AB"}
    assert count_parameters(model)[0] == 4 * 2 * (8 + 8)


def test_suffix_rule_needs_a_dot_boundary_and_accepts_full_names():
    model = make_model()
    apply_lora(model, "layers.1.k_proj", r=1)
    assert [n for n, _ in lora_layers(model)] == ["layers.1.k_proj"]
    model = make_model()
    with pytest.raises(ValueError, match=r"\['proj'\] match no nn.Linear"):
        apply_lora(model, ["proj"])  # "q_proj" does not end with ".proj"


def test_identity_at_init_on_a_model():
    model = make_model()
    x = torch.randn(2, 5, 8)
    before = model(x)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "out_proj"], r=4)
    assert torch.equal(model(x), before)


def test_unmatched_targets_list_linear_layers_and_leave_model_unchanged():
    model = make_model()
    state, grads, text = snapshot(model)
    with pytest.raises(ValueError) as info:
        apply_lora(model, ["q_proj", "query"])
    msg = str(info.value)
    assert "['query']" in msg and "layers.0.q_proj" in msg and "head" in msg
    assert snapshot(model)[2] == text and snapshot(model)[1] == grads


def test_target_matching_non_linear_is_rejected():
    model = make_model()
    with pytest.raises(ValueError, match=r"\['norm'\] match no nn.Linear"):
        apply_lora(model, ["norm"])


def test_rank_too_large_leaves_model_unchanged():
    model = make_model()
    state, grads, text = snapshot(model)
    with pytest.raises(ValueError, match="exceeds"):
        apply_lora(model, ["q_proj", "head"], r=4)  # head is (3, 8): r=4 > 3
    assert not lora_layers(model) and repr(model) == text
    assert all(p.requires_grad for p in model.parameters())


def test_applying_twice_is_an_error():
    model = make_model()
    apply_lora(model, ["q_proj"], r=2)
    text = repr(model)
    with pytest.raises(ValueError, match="'layers.0.q_proj' already has LoRA"):
        apply_lora(model, ["q_proj"], r=2)
    assert repr(model) == text
    apply_lora(model, ["v_proj"], r=2)  # other layers are fine
    assert len(lora_layers(model)) == 4


def test_multihead_attention_out_proj_is_refused():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    with pytest.raises(ValueError, match="never calls out_proj"):
        apply_lora(model, ["out_proj"])
    assert not lora_layers(model)


@pytest.mark.parametrize("targets", [[], "", [3], None])
def test_bad_target_modules_type(targets):
    with pytest.raises(TypeError, match="target_modules must be a non-empty list"):
        apply_lora(make_model(), targets)


def test_bias_modes():
    model = apply_lora(make_model(), ["q_proj"], r=2)
    mark_only_lora_as_trainable(model, bias="lora_only")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "layers.0.q_proj.base.bias" in trainable and "layers.0.k_proj.bias" not in trainable
    mark_only_lora_as_trainable(model, bias="all")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"layers.0.k_proj.bias", "norm.bias", "head.bias"} <= trainable
    assert "head.weight" not in trainable
    mark_only_lora_as_trainable(model, bias="none")
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="bias must be one of"):
        mark_only_lora_as_trainable(model, bias="some")
    with pytest.raises(ValueError, match="no LoRALinear layers"):
        mark_only_lora_as_trainable(make_model())


def test_training_changes_only_lora_parameters():
    model = apply_lora(make_model(), ["q_proj", "v_proj"], r=2)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in lora.items())


@settings(deadline=None, max_examples=15)
@given(d=st.integers(2, 12), n_layers=st.integers(1, 2), data=st.data(),
       batch=st.integers(1, 3), seq=st.integers(1, 4), seed=st.integers(0, 100))
def test_outputs_agree_unmerged_merged_unmerged_unloaded(d, n_layers, data, batch, seq, seed):
    r = data.draw(st.integers(1, min(d, 3)))
    targets = data.draw(st.lists(st.sampled_from(["q_proj", "k_proj", "v_proj", "out_proj"]),
                                 min_size=1, max_size=4, unique=True))
    model = apply_lora(make_model(seed, d=d, n_layers=n_layers), targets, r=r, lora_alpha=2 * r)
    randomize_lora(model)
    x = torch.randn(batch, seq, d)
    y = model(x)
    merge_lora(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    assert torch.allclose(model(x), y, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(model(x), y, atol=1e-5)
    plain = merge_and_unload(model)
    assert not lora_layers(plain)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert torch.allclose(plain(x), y, atol=1e-5)


def test_merge_and_unload_of_a_single_layer_and_of_a_merged_model():
    layer = LoRALinear(nn.Linear(6, 4), r=2, init_lora_weights=False)
    x = torch.randn(3, 6)
    y = layer(x)
    plain = merge_and_unload(layer)
    assert type(plain) is nn.Linear and torch.allclose(plain(x), y, atol=1e-6)
    model = apply_lora(make_model(), ["q_proj"], r=2)
    randomize_lora(model)
    x = torch.randn(2, 3, 8)
    y = model(x)
    merge_lora(model)
    assert torch.allclose(merge_and_unload(model)(x), y, atol=1e-5)  # no double merge


def test_merge_lora_refuses_nan_anywhere_and_changes_nothing():
    model = apply_lora(make_model(), ["q_proj", "v_proj"], r=2)
    randomize_lora(model)
    with torch.no_grad():
        lora_layers(model)[-1][1].lora_A[0, 0] = float("nan")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"\['layers.1.v_proj'\] contains NaN"):
        merge_lora(model)
    assert all(torch.equal(v, state[k]) or k.endswith("lora_A") for k, v in model.state_dict().items())
    assert not any(layer.merged for _, layer in lora_layers(model))
    with pytest.raises(ValueError, match="NaN"):
        merge_and_unload(model)
    assert len(lora_layers(model)) == 4


def test_double_merge_lora_changes_nothing():
    model = apply_lora(make_model(), ["q_proj"], r=2)
    randomize_lora(model)
    merge_lora(model)
    state = copy.deepcopy(model.state_dict())
    merge_lora(model)  # every layer already merged: nothing to do
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_disable_lora_gives_base_output_and_restores():
    base = make_model()
    model = apply_lora(copy.deepcopy(base), ["q_proj", "v_proj"], r=2)
    randomize_lora(model)
    x = torch.randn(2, 4, 8)
    adapted = model(x)
    assert not torch.allclose(adapted, base(x))
    with disable_lora(model):
        assert torch.equal(model(x), base(x))
    assert torch.equal(model(x), adapted)
    with pytest.raises(RuntimeError):
        with disable_lora(model):
            raise RuntimeError("boom")
    assert torch.equal(model(x), adapted)  # restored after an exception too
    with disable_lora(model):  # nested: leaving the inner block keeps the outer one's state
        with disable_lora(model):
            pass
        assert torch.equal(model(x), base(x))
    assert torch.equal(model(x), adapted)


def test_disable_lora_refuses_merged_and_plain_models():
    model = apply_lora(make_model(), ["q_proj"], r=2)
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with disable_lora(model):
            pass
    with pytest.raises(ValueError, match="no LoRALinear layers"):
        with disable_lora(make_model()):
            pass
    for fn in (merge_lora, unmerge_lora, merge_and_unload):
        with pytest.raises(ValueError, match="no LoRALinear layers"):
            fn(make_model())


def test_a_string_target_is_a_full_regex_as_in_peft():
    """PEFT's check_target_module_exists: a string is re.fullmatch-ed against the module name."""
    model = make_model()
    apply_lora(model, r"layers\.\d\.(q|v)_proj", r=1)
    assert [n for n, _ in lora_layers(model)] == [
        "layers.0.q_proj", "layers.0.v_proj", "layers.1.q_proj", "layers.1.v_proj"]
    with pytest.raises(ValueError, match=r"a string is a regex .* pass a list, e.g. \['q_proj'\]"):
        apply_lora(make_model(), "q_proj")  # a bare name is not the whole path
    with pytest.raises(ValueError, match="not a valid one"):
        apply_lora(make_model(), "q_proj(")


def test_rank_too_large_names_the_module():
    with pytest.raises(ValueError, match=r"r=4 exceeds .* of \{'head': \(8, 3\)\}"):
        apply_lora(make_model(), ["q_proj", "head"], r=4)


def test_any_error_while_wrapping_restores_every_layer(monkeypatch):
    """PiSSA's SVD failing on the second layer must not leave the first holding its residual."""
    import lora_helpers.pissa as pissa
    model = make_model()
    before = snapshot(model)
    real, calls = pissa.pissa_factors, []

    def failing(weight, r, scaling):
        calls.append(1)
        if len(calls) == 2:
            raise torch.linalg.LinAlgError("SVD did not converge")
        return real(weight, r, scaling)

    monkeypatch.setattr("lora_helpers.layers.pissa_factors", failing)
    with pytest.raises(torch.linalg.LinAlgError):
        apply_lora(model, ["q_proj"], r=2, init_lora_weights="pissa")
    after = snapshot(model)
    assert len(calls) == 2 and after[1:] == before[1:]
    assert all(torch.equal(v, before[0][k]) for k, v in after[0].items())


def test_the_model_itself_cannot_be_a_target():
    from lora_helpers._modules import set_submodule
    with pytest.raises(ValueError, match="single layer use LoRALinear"):
        apply_lora(nn.Linear(4, 4), ".*", r=2)
    with pytest.raises(ValueError, match="cannot replace the model itself"):
        set_submodule(nn.Linear(2, 2), "", nn.Linear(2, 2))


def test_a_new_layer_type_plugs_in_through_the_wrapper_table(monkeypatch):
    from lora_helpers import LORA_WRAPPERS

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    built = []
    monkeypatch.setitem(LORA_WRAPPERS, Scale, lambda module, **kw: built.append(kw["r"]) or module)
    model = nn.Sequential(Scale(), nn.Linear(4, 4))
    apply_lora(model, ["0", "1"], r=2)
    assert built == [2] and isinstance(model[1], LoRALinear)


def test_a_string_target_must_match_the_whole_name_not_a_prefix():
    with pytest.raises(ValueError, match="match no nn.Linear"):
        apply_lora(make_model(), r"layers\.0\.q", r=1)  # only a prefix of layers.0.q_proj
