"""Parameter counting and the paper's LoRA parameter formula (§5.1)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (apply_lora, count_parameters, lora_parameter_count,
                          print_trainable_parameters)


def test_count_parameters_counts_shared_weights_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2, bias=False))
    model[3].weight.requires_grad_(False)
    assert count_parameters(model) == (20, 28)


def test_print_trainable_parameters_matches_peft_format(capsys):
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    apply_lora(model, ["0"], r=4)
    print_trainable_parameters(model)
    # LoRA: 4 * (100 + 100) = 800 trainable; base 10,100 + 1,010 = 11,110; all = 11,910.
    assert capsys.readouterr().out == \
        "trainable params: 800 || all params: 11,910 || trainable%: 6.7170\n"


def test_print_trainable_parameters_of_empty_model(capsys):
    print_trainable_parameters(nn.ReLU())
    assert capsys.readouterr().out == "trainable params: 0 || all params: 0 || trainable%: 0.0000\n"


@pytest.mark.parametrize("n_layers,d,r,expected", [
    (96, 12288, 1, 4_718_592),    # GPT-3 175B, Wq and Wv, Table 4 "4.7M"
    (96, 12288, 8, 37_748_736),   # Table 4 "37.7M"
    (12, 768, 8, 294_912),        # RoBERTa-base, Wq and Wv, "0.3M"
])
def test_paper_counts(n_layers, d, r, expected):
    shapes = [(d, d)] * (2 * n_layers)  # Wq and Wv in every layer
    assert lora_parameter_count(shapes, r) == expected == 2 * (2 * n_layers) * d * r  # 2 · L̂ · d_model · r


@settings(max_examples=30)  # a counting identity: 30 shape lists cover it
@given(shapes=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=1, max_size=5),
       r=st.integers(1, 8))
def test_count_matches_real_lora_layers(shapes, r):
    shapes = [(max(o, r), max(i, r)) for o, i in shapes]
    model = nn.ModuleDict({f"l{k}": nn.Linear(i, o) for k, (o, i) in enumerate(shapes)})
    apply_lora(model, list(model.keys()), r=r)
    assert count_parameters(model)[0] == lora_parameter_count(shapes, r)


@pytest.mark.parametrize("shapes,r,error,match", [
    ([(8, 8)], 0, ValueError, "r=0 is out of range: need r >= 1"),
    ([(8, 8)], 2.5, TypeError, r"r must be an int, got 2.5 \(float\)"),
    ([], 2, ValueError, "shapes is empty"),
    ([(8, 8, 8)], 2, ValueError, r"pair, got \(8, 8, 8\)"),
    ([(8, -1)], 2, ValueError, "in_features=-1 is out of range: need in_features >= 1"),
    ([(8, 4)], 5, ValueError, r"r=5 exceeds min\(8, 4\) = 4"),
])
def test_bad_input(shapes, r, error, match):
    with pytest.raises(error, match=match):
        lora_parameter_count(shapes, r)
