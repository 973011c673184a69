"""The tiny transformer: shapes, names, parameter counts, and the attention math."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (CharGPT, CharTokenizer, MultiHeadSelfAttention, TinyTransformerClassifier,
                          TransformerBlock, apply_lora, generate, generate_text, lora_layers)


@settings(max_examples=20, deadline=None)
@given(n_heads=st.sampled_from([1, 2, 4]), d_head=st.integers(1, 8), batch=st.integers(1, 3),
       seq=st.integers(1, 6), seed=st.integers(0, 1000), causal=st.booleans())
def test_attention_equals_scaled_dot_product_attention(n_heads, d_head, batch, seq, seed, causal):
    # Bidirectional (the classifier's default) and causal (CharGPT's, is_causal=True in torch).
    torch.manual_seed(seed)
    d = n_heads * d_head
    attn = MultiHeadSelfAttention(d, n_heads, causal=causal)
    x = torch.randn(batch, seq, d)

    def heads(t):
        return t.view(batch, seq, n_heads, d_head).transpose(1, 2)

    ref = nn.functional.scaled_dot_product_attention(
        heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x)), is_causal=causal)
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



# ---------------------------------------------------------------- causal attention, CharGPT
def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(8, 2, causal=True)
    x = torch.randn(2, 6, 8)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, 8)  # change positions 4 and 5 only
    assert torch.allclose(attn(x)[:, :4], attn(changed)[:, :4], atol=1e-6)
    assert not torch.allclose(attn(x)[:, 4:], attn(changed)[:, 4:])


def test_attention_defaults_to_non_causal_and_same_numbers():
    torch.manual_seed(0)
    plain = MultiHeadSelfAttention(8, 2)
    torch.manual_seed(0)
    explicit = MultiHeadSelfAttention(8, 2, causal=False)
    x = torch.randn(2, 5, 8)
    assert plain.causal is False and torch.equal(plain(x), explicit(x))
    with pytest.raises(TypeError, match="causal must be True or False"):
        MultiHeadSelfAttention(8, 2, causal="yes")


def test_chargpt_parameter_count_matches_the_docstring():
    model = CharGPT(vocab_size=96, context=64, d_model=128, n_heads=4, n_layers=2)
    counts = {name: sum(p.numel() for p in child.parameters())
              for name, child in model.named_children()}
    assert counts == {"tok_embed": 12_288, "blocks": 2 * 198_272, "norm": 256, "lm_head": 12_384}
    assert model.pos_embed.numel() == 8_192
    assert sum(p.numel() for p in model.parameters()) == 429_664


@pytest.mark.parametrize("vocab,context,d,layers,ratio", [(96, 32, 64, 2, 4), (10, 5, 8, 1, 2), (7, 3, 12, 3, 1)])
def test_chargpt_parameter_formula(vocab, context, d, layers, ratio):
    model = CharGPT(vocab, context=context, d_model=d, n_heads=2 if d % 2 == 0 else 1,
                    n_layers=layers, mlp_ratio=ratio)
    per_block = 4 * (d * d + d) + 4 * d + 2 * ratio * d * d + ratio * d + d
    expected = vocab * d + context * d + layers * per_block + 2 * d + d * vocab + vocab
    assert sum(p.numel() for p in model.parameters()) == expected


def test_chargpt_shapes_names_and_causality():
    torch.manual_seed(0)
    model = CharGPT(vocab_size=11, context=8, d_model=16, n_heads=2, n_layers=2).eval()
    idx = torch.randint(11, (3, 8))
    logits = model(idx)
    assert logits.shape == (3, 8, 11)
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    assert torch.allclose(model(changed)[:, :5], logits[:, :5], atol=1e-6)  # no peeking ahead
    assert torch.allclose(model(idx[:, :5]), logits[:, :5], atol=1e-5)     # shorter input, same prefix
    apply_lora(model, ["q_proj", "v_proj", "fc1", "fc2"], r=2)
    assert [n for n, _ in lora_layers(model)][:4] == [
        "blocks.0.attn.q_proj", "blocks.0.attn.v_proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]


def test_chargpt_refuses_bad_input():
    model = CharGPT(vocab_size=5, context=4, d_model=8, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match="sequence length 5 must be between 1 and the model's context 4"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.long and shape"):
        model(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="torch.long and shape"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="context must be an int"):
        CharGPT(vocab_size=5, context=4.0)
    with pytest.raises(ValueError, match="vocab_size=0 is out of range"):
        CharGPT(vocab_size=0)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\) for vocab_size=5, got 0..5"):
        model(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\).*got -1..0"):
        model(torch.tensor([[-1, 0]]))


# ---------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    tok = CharTokenizer("abcdefgh \n")
    return CharGPT(tok.vocab_size, context=6, d_model=16, n_heads=2, n_layers=1).eval(), tok


def test_generate_is_seeded_and_extends_past_the_context(tiny_lm):
    model, tok = tiny_lm
    prompt = tok.encode("abc")[None]  # (1, 3)
    out = generate(model, prompt, 20, generator=torch.Generator().manual_seed(1))
    again = generate(model, prompt, 20, generator=torch.Generator().manual_seed(1))
    assert out.shape == (1, 23) and torch.equal(out, again) and torch.equal(out[:, :3], prompt)
    other = generate(model, prompt, 20, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_greedy_picks_the_argmax_of_the_last_window(tiny_lm):
    model, tok = tiny_lm
    out = generate(model, tok.encode("abcde")[None], 4, greedy=True)
    for t in range(5, 9):
        window = out[:, max(0, t - model.context):t]
        assert out[0, t] == model(window)[0, -1].argmax()


def test_top_k_one_equals_greedy_and_low_temperature_approaches_it(tiny_lm):
    model, tok = tiny_lm
    prompt = tok.encode("ab")[None].repeat(4, 1)  # (4, 2): a batch of prompts
    greedy = generate(model, prompt, 10, greedy=True)
    top1 = generate(model, prompt, 10, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    cold = generate(model, prompt, 10, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, cold)


def test_top_k_restricts_the_choice(tiny_lm):
    model, tok = tiny_lm
    prompt = tok.encode("a")[None].repeat(200, 1)
    out = generate(model, prompt, 1, top_k=2, temperature=5.0, generator=torch.Generator().manual_seed(0))
    allowed = set(model(prompt[:1])[0, -1].topk(2).indices.tolist())
    assert set(out[:, 1].tolist()) == allowed


def test_generate_text_round_trip_and_mode_restored(tiny_lm):
    model, tok = tiny_lm
    model.train()
    text = generate_text(model, tok, "ab", 5, generator=torch.Generator().manual_seed(0))
    assert model.training and len(text) == 7 and text.startswith("ab") and set(text) <= set(tok.chars)
    model.eval()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0, got 0.0"),
    ({"temperature": -1}, ValueError, "temperature must be a finite number > 0"),
    ({"temperature": float("nan")}, ValueError, "temperature must be a finite number > 0"),
    ({"temperature": "hot"}, TypeError, "temperature must be a number"),
    ({"top_k": 0}, ValueError, "top_k=0 is out of range"),
    ({"top_k": 11}, ValueError, r"top_k=11 is out of range: need 1 <= top_k <= 10"),
    ({"max_new_tokens": 2.0}, TypeError, "max_new_tokens must be an int"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens=-1 is out of range"),
    ({"greedy": 1}, TypeError, "greedy must be True or False"),
])
def test_generate_refuses_bad_arguments(tiny_lm, kwargs, error, match):
    model, tok = tiny_lm
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(error, match=match):
        generate(model, tok.encode("ab")[None], **args)


def test_generate_refuses_bad_prompts(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"characters \['z'\] are not in the vocabulary"):
        generate_text(model, tok, "az", 3)
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 10\)"):
        generate(model, torch.tensor([[12]]), 3)
    with pytest.raises(TypeError, match="dtype torch.long and shape"):
        generate(model, torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="vocab_size \\(3\\) differs from the model's \\(10\\)"):
        generate_text(model, CharTokenizer("abc"), "ab", 3)
    with pytest.raises(TypeError, match="prompt must be a string"):
        generate_text(model, tok, ["a"], 3)


def test_a_prompt_longer_than_the_context_is_read_from_its_last_tokens(tiny_lm):
    # as nanoGPT: the model sees the last `context` tokens; the whole prompt stays in the output
    model, tok = tiny_lm
    long = tok.encode("hgfedcbah")[None]  # (1, 9), context 6
    out = generate(model, long, 4, greedy=True)
    assert out.shape == (1, 13) and torch.equal(out[:, :9], long)
    assert torch.equal(out[:, 9:], generate(model, long[:, -6:], 4, greedy=True)[:, 6:])
