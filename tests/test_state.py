"""Adapter-only state dicts: round trips, strictness, sizes."""

import pytest
import torch
from torch import nn

from lora_helpers import (apply_lora, checkpoint_bytes, load_lora_state_dict, lora_layers,
                          lora_state_dict, merge_lora)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))


def trained_adapter(seed=0, r=2, targets=("0", "2")):
    model = apply_lora(make_model(), list(targets), r=r)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_A.normal_()
            layer.lora_B.normal_()
    return model


def test_keys_shapes_and_copies():
    model = trained_adapter()
    state = lora_state_dict(model)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "0.lora_A": (2, 10), "0.lora_B": (32, 2), "2.lora_A": (2, 32), "2.lora_B": (32, 2)}
    assert all(not v.requires_grad for v in state.values())
    with torch.no_grad():
        lora_layers(model)[0][1].lora_A.add_(1.0)
    assert not torch.equal(state["0.lora_A"], lora_layers(model)[0][1].lora_A)  # a copy


def test_round_trip_into_a_freshly_built_model_reproduces_outputs():
    model = trained_adapter()
    x = torch.randn(5, 10)
    y = model(x)
    fresh = apply_lora(make_model(), ["0", "2"], r=2)  # same base seed, fresh adapter
    assert not torch.allclose(fresh(x), y)
    load_lora_state_dict(fresh, lora_state_dict(model))
    assert torch.equal(fresh(x), y)


def test_round_trip_through_torch_save(tmp_path):
    model = trained_adapter()
    torch.save(lora_state_dict(model), tmp_path / "adapter.pt")
    fresh = apply_lora(make_model(), ["0", "2"], r=2)
    load_lora_state_dict(fresh, torch.load(tmp_path / "adapter.pt"))
    x = torch.randn(3, 10)
    assert torch.equal(fresh(x), model(x))


def test_missing_unexpected_and_wrong_shape_are_named_and_change_nothing():
    model = trained_adapter()
    before = lora_state_dict(model)
    other = lora_state_dict(trained_adapter(seed=5))
    partial = {k: v for k, v in other.items() if k != "2.lora_B"}
    with pytest.raises(ValueError, match=r"missing \['2.lora_B'\], unexpected \[\]"):
        load_lora_state_dict(model, partial)
    with pytest.raises(ValueError, match=r"unexpected \['4.lora_A'\]"):
        load_lora_state_dict(model, {**other, "4.lora_A": torch.zeros(2, 32)})
    wrong = dict(other)
    wrong["2.lora_A"] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match=r"shape mismatch for '2.lora_A'.*\(4, 32\).*\(2, 32\)"):
        load_lora_state_dict(model, wrong)
    with pytest.raises(TypeError, match="must be a Tensor"):
        load_lora_state_dict(model, {**other, "0.lora_A": [[0.0]]})
    after = lora_state_dict(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loading_into_merged_model_is_refused():
    model = trained_adapter()
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        load_lora_state_dict(model, lora_state_dict(trained_adapter(seed=3)))


def test_checkpoint_bytes_tracks_tensor_sizes():
    model = trained_adapter()
    adapter = checkpoint_bytes(lora_state_dict(model))
    full = checkpoint_bytes(model.state_dict())
    n_adapter = sum(v.numel() for v in lora_state_dict(model).values())
    assert n_adapter * 4 <= adapter < n_adapter * 4 + 4096  # float32 data + a small header
    assert full > 4 * sum(p.numel() for p in make_model().parameters())
    grown = checkpoint_bytes({"x": torch.zeros(1000)}) - checkpoint_bytes({"x": torch.zeros(10)})
    assert 3960 <= grown < 3960 + 64  # 990 more float32 values, storage aligned to 64 bytes


def test_bias_modes_save_and_restore_trained_biases():
    model = trained_adapter()  # LoRA on layers "0" and "2"; "4" is a plain Linear
    keys = {mode: set(lora_state_dict(model, bias=mode)) for mode in ("none", "lora_only", "all")}
    assert keys["lora_only"] - keys["none"] == {"0.base.bias", "2.base.bias"}
    assert keys["all"] - keys["none"] == {"0.base.bias", "2.base.bias", "4.bias"}
    with torch.no_grad():
        model[0].base.bias.add_(1.0)  # as if trained with bias="lora_only"
    x = torch.randn(4, 10)
    y = model(x)
    fresh = apply_lora(make_model(), ["0", "2"], r=2)
    load_lora_state_dict(fresh, lora_state_dict(model, bias="lora_only"), bias="lora_only")
    assert torch.equal(fresh(x), y)
    with pytest.raises(ValueError, match=r"unexpected \['0.base.bias', '2.base.bias'\].*bias='none'"):
        load_lora_state_dict(fresh, lora_state_dict(model, bias="lora_only"))
    with pytest.raises(ValueError, match="bias must be one of"):
        lora_state_dict(model, bias="lora")
