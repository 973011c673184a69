"""The tiny transformer: shapes, names, parameter counts, and the attention math."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (MultiHeadSelfAttention, TinyTransformerClassifier, TransformerBlock,
                          apply_lora, lora_layers)


@settings(max_examples=20, deadline=None)
@given(n_heads=st.sampled_from([1, 2, 4]), d_head=st.integers(1, 8), batch=st.integers(1, 3),
       seq=st.integers(1, 6), seed=st.integers(0, 1000))
def test_attention_equals_scaled_dot_product_attention(n_heads, d_head, batch, seq, seed):
    torch.manual_seed(seed)
    d = n_heads * d_head
    attn = MultiHeadSelfAttention(d, n_heads)
    x = torch.randn(batch, seq, d)

    def heads(t):
        return t.view(batch, seq, n_heads, d_head).transpose(1, 2)

    ref = nn.functional.scaled_dot_product_attention(
        heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x)))
    ref = attn.out_proj(ref.transpose(1, 2).reshape(batch, seq, d))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_attention_is_permutation_equivariant_without_positions():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(8, 2)
    x = torch.randn(2, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(attn(x)[:, perm], attn(x[:, perm]), atol=1e-6)


def test_block_shapes_and_residual():
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, mlp_ratio=2)
    x = torch.randn(3, 7, 16)
    assert block(x).shape == (3, 7, 16)
    with torch.no_grad():  # zero both residual branches: the block becomes the identity
        for layer in (block.attn.out_proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    assert torch.equal(block(x), x)


def test_classifier_parameter_count_matches_the_docstring():
    model = TinyTransformerClassifier()
    counts = {name: sum(p.numel() for p in child.parameters())
              for name, child in model.named_children()}
    assert counts == {"patch_embed": 320, "blocks": 2 * 49_984, "norm": 128, "head": 650}
    assert model.pos_embed.numel() == 1024
    assert sum(p.numel() for p in model.parameters()) == 102_090


def test_classifier_accepts_three_input_layouts_identically():
    torch.manual_seed(0)
    model = TinyTransformerClassifier().eval()
    x = torch.rand(4, 8, 8)
    y = model(x)
    assert y.shape == (4, 10)
    assert torch.equal(model(x.view(4, 64)), y) and torch.equal(model(x.unsqueeze(1)), y)


def test_patchify_cuts_non_overlapping_patches_in_row_major_order():
    model = TinyTransformerClassifier(patch_size=2)
    image = torch.arange(64.0).view(1, 8, 8)
    patches = model.patchify(image)
    assert patches.shape == (1, 16, 4)
    assert patches[0, 0].tolist() == [0, 1, 8, 9]      # top-left 2x2
    assert patches[0, 1].tolist() == [2, 3, 10, 11]    # its right neighbour
    assert patches[0, 4].tolist() == [16, 17, 24, 25]  # first patch of the second row
    assert sorted(patches.flatten().tolist()) == list(range(64))


def test_module_names_match_peft_targets():
    model = apply_lora(TinyTransformerClassifier(), ["q_proj", "v_proj"], r=4)
    assert [n for n, _ in lora_layers(model)] == [
        "blocks.0.attn.q_proj", "blocks.0.attn.v_proj", "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"]
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {"blocks.1.mlp.fc1", "blocks.1.mlp.fc2", "head", "patch_embed"} <= names


@pytest.mark.parametrize("make,match", [
    (lambda: MultiHeadSelfAttention(10, 3), "not divisible by n_heads=3"),
    (lambda: MultiHeadSelfAttention(8, 0), "n_heads=0 is out of range: need n_heads >= 1"),
    (lambda: TinyTransformerClassifier(patch_size=3), "patch_size=3 must divide image_size=8"),
    (lambda: TinyTransformerClassifier(n_layers=0), "n_layers=0 is out of range: need n_layers >= 1"),
    (lambda: TransformerBlock(8, 2, mlp_ratio=0), "mlp_ratio=0 is out of range"),
])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_integer_sizes_are_type_errors():
    with pytest.raises(TypeError, match=r"d_model must be an int, got 64.5 \(float\)"):
        TinyTransformerClassifier(d_model=64.5)
    with pytest.raises(TypeError, match="n_heads must be an int, got '4'"):
        MultiHeadSelfAttention(8, "4")


def test_bad_input_shapes():
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 8, 8\).*got \(2, 7, 7\)"):
        TinyTransformerClassifier()(torch.rand(2, 7, 7))
    with pytest.raises(TypeError, match="floating-point image tensor, got torch.int64"):
        TinyTransformerClassifier()(torch.ones(2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"expected \(batch, seq, 8\), got \(2, 3, 6\)"):
        MultiHeadSelfAttention(8, 2)(torch.rand(2, 3, 6))
