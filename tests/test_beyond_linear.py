"""LoRA beyond nn.Linear: embeddings, convolutions, fused projections, nn.MultiheadAttention.

Each layer: shapes, ΔW = 0 at init, merge/unmerge exact, gradients only in A and B, clear errors
for bad input, and equal outputs (≤ 1e-5) to PEFT 0.21.2 given the same A and B values.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers.attention import LoRAFusedLinear, LoRAMultiheadAttention
from lora_helpers.conv import LoRAConv1d, LoRAConv2d
from lora_helpers.embedding import LoRAEmbedding
from lora_helpers.layers import LoRALinear

FAST = settings(max_examples=15, deadline=None)


def _peft_module():
    # Imported by the tests that compare with PEFT only (importing it takes seconds): a pytest
    # worker that runs none of them does not pay for it.
    return pytest.importorskip("peft")


def _peft(model: nn.Module, targets: list[str], **kw) -> nn.Module:
    peft = _peft_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(model, peft.LoraConfig(target_modules=targets, **kw))


def merge_round_trip(layer: nn.Module, x: torch.Tensor, weight_atol: float) -> torch.Tensor:
    """Merged, ``layer`` gives the unmerged output; unmerged again, its base holds W0. Returns
    the output."""
    out, w0 = layer(x), layer.base.weight.clone()
    layer.merge()
    assert torch.allclose(layer(x), out, atol=1e-5)
    layer.unmerge()
    assert torch.allclose(layer.base.weight, w0, atol=weight_atol)
    return out


def _only_lora_grads(layer: nn.Module, out: torch.Tensor) -> None:
    out.square().sum().backward()
    for name, p in layer.named_parameters():
        is_lora = name in layer.lora_parameter_names
        assert p.requires_grad == is_lora, name
        assert (p.grad is not None) == is_lora, name


# ---------------------------------------------------------------- embeddings
@FAST
@given(n=st.integers(4, 30), d=st.integers(2, 12), r=st.integers(1, 4), seed=st.integers(0, 99))
def test_embedding_shapes_init_merge(n, d, r, seed):
    torch.manual_seed(seed)
    r = min(r, n, d)
    base = nn.Embedding(n, d)
    layer = LoRAEmbedding(base, r=r, lora_alpha=2 * r)
    assert layer.lora_embedding_A.shape == (r, n) and layer.lora_embedding_B.shape == (d, r)
    assert torch.all(layer.lora_embedding_A == 0) and layer.lora_embedding_B.std() > 0
    ids = torch.randint(0, n, (3, 5))
    assert torch.equal(layer(ids), base(ids))  # ΔE = 0 at init
    layer.reset_lora_parameters(False)
    assert merge_round_trip(layer, ids, weight_atol=1e-5).shape == (3, 5, d)


def test_embedding_unseen_tokens_keep_their_rows():
    torch.manual_seed(0)
    layer = LoRAEmbedding(nn.Embedding(10, 6), r=2)
    opt = torch.optim.SGD([layer.lora_embedding_A, layer.lora_embedding_B], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.tensor([1, 2, 3])).sum().backward()
        opt.step()
    delta = layer.delta_weight()
    assert delta[[1, 2, 3]].abs().sum() > 0 and torch.all(delta[[0, 4, 5, 6, 7, 8, 9]] == 0)


def test_embedding_gradients_and_errors():
    layer = LoRAEmbedding(nn.Embedding(10, 6), r=2, init_lora_weights=False)
    _only_lora_grads(layer, layer(torch.tensor([[1, 2]])))
    with pytest.raises(ValueError, match="max_norm"):
        LoRAEmbedding(nn.Embedding(10, 6, max_norm=1.0))
    with pytest.raises(ValueError, match="lora_dropout"):
        LoRAEmbedding(nn.Embedding(10, 6), r=2, lora_dropout=0.1)
    with pytest.raises(ValueError, match="min\\(num_embeddings, embedding_dim\\)"):
        LoRAEmbedding(nn.Embedding(10, 6), r=7)
    with pytest.raises(TypeError, match="nn.Embedding"):
        LoRAEmbedding(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="int64"):
        layer(torch.zeros(2))


def test_embedding_equals_peft():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8))
    ours = LoRAEmbedding(copy.deepcopy(model[0]), r=3, lora_alpha=6, init_lora_weights=False)
    theirs = _peft(model, ["0"], r=3, lora_alpha=6)
    layer = theirs.base_model.model[0]
    assert layer.lora_embedding_A["default"].shape == ours.lora_embedding_A.shape
    assert layer.lora_embedding_B["default"].shape == ours.lora_embedding_B.shape
    with torch.no_grad():
        layer.lora_embedding_A["default"].copy_(ours.lora_embedding_A)
        layer.lora_embedding_B["default"].copy_(ours.lora_embedding_B)
    ids = torch.randint(0, 20, (4, 7))
    assert (theirs(ids) - ours(ids)).abs().max() <= 1e-5


# ---------------------------------------------------------------- convolutions
@FAST
@given(c_in=st.integers(1, 4), c_out=st.integers(1, 5), k=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]),
       r=st.integers(1, 3), seed=st.integers(0, 99))
def test_conv2d_merge_is_exact(c_in, c_out, k, stride, padding, dilation, mode, r, seed):
    torch.manual_seed(seed)
    if mode != "zeros" and padding == 0:
        mode = "zeros"
    base = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation,
                     padding_mode=mode)
    r = min(r, c_out, c_in * k * k)
    layer = LoRAConv2d(base, r=r, lora_alpha=r)
    assert layer.lora_A.shape == (r, c_in, k, k) and layer.lora_B.shape == (c_out, r, 1, 1)
    assert sum(p.numel() for p in (layer.lora_A, layer.lora_B)) == r * (c_in * k * k + c_out)
    x = torch.randn(2, c_in, 9, 9)
    assert torch.equal(layer(x), base(x))
    layer.reset_lora_parameters(False)
    assert merge_round_trip(layer, x, weight_atol=1e-6).shape == base(x).shape


def test_conv1d_merge_and_gradients():
    torch.manual_seed(0)
    layer = LoRAConv1d(nn.Conv1d(3, 5, 3, padding=1), r=2, init_lora_weights=False)
    x = torch.randn(2, 3, 11)
    out = layer(x)
    assert out.shape == (2, 5, 11) and layer.lora_B.shape == (5, 2, 1)
    with torch.no_grad():
        layer.merge()
        assert torch.allclose(layer(x), out, atol=1e-5)
        layer.unmerge()
    _only_lora_grads(layer, layer(x))


def test_conv_errors():
    with pytest.raises(ValueError, match="groups=2"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), r=2)
    with pytest.raises(ValueError, match="min\\(c_out, c_in·k²\\) = min\\(8, 9\\)"):
        LoRAConv2d(nn.Conv2d(1, 8, 3), r=9)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        LoRAConv2d(nn.Conv1d(1, 8, 3))
    with pytest.raises(ValueError, match="already has LoRA"):
        LoRAConv2d(LoRAConv2d(nn.Conv2d(2, 2, 3), r=1))
    with pytest.raises(ValueError, match="lora_alpha"):
        LoRAConv2d(nn.Conv2d(2, 2, 3), r=1, lora_alpha=float("inf"))


@pytest.mark.parametrize("conv, shape", [(nn.Conv2d(3, 6, 3, stride=2, padding=1), (2, 3, 10, 10)),
                                         (nn.Conv1d(3, 6, 5, padding=2), (2, 3, 17))])
def test_conv_equals_peft(conv, shape):
    torch.manual_seed(0)
    model = nn.Sequential(conv)
    cls = LoRAConv2d if isinstance(conv, nn.Conv2d) else LoRAConv1d
    ours = cls(copy.deepcopy(conv), r=2, lora_alpha=4, init_lora_weights=False)
    theirs = _peft(model, ["0"], r=2, lora_alpha=4)
    layer = theirs.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(*shape)
    assert (theirs(x) - ours(x)).abs().max() <= 1e-5
    with torch.no_grad():
        assert (layer.get_delta_weight("default") - ours.delta_weight()).abs().max() <= 1e-6


# ---------------------------------------------------------------- fused projections
@FAST
@given(d=st.integers(2, 8), r=st.integers(1, 2), seed=st.integers(0, 99),
       enable=st.lists(st.booleans(), min_size=3, max_size=3).filter(any))
def test_fused_equals_separate_projections(d, r, seed, enable):
    torch.manual_seed(seed)
    fused = nn.Linear(d, 3 * d)
    layer = LoRAFusedLinear(fused, (d, d, d), enable, r=min(r, d), init_lora_weights=False)
    x = torch.randn(4, d)
    outs = []
    pairs = layer._pairs()
    for i in range(3):
        sep = nn.Linear(d, d)
        with torch.no_grad():
            sep.weight.copy_(fused.weight[i * d:(i + 1) * d])
            sep.bias.copy_(fused.bias[i * d:(i + 1) * d])
        if enable[i]:
            _, a, b = next(pairs)
            sep = LoRALinear(sep, r=min(r, d))
            with torch.no_grad():
                sep.lora_A.copy_(a)
                sep.lora_B.copy_(b)
        outs.append(sep(x))
    out = layer(x)
    assert torch.allclose(out, torch.cat(outs, -1), atol=1e-5)
    with torch.no_grad():
        layer.merge()
        assert torch.allclose(layer(x), out, atol=1e-5)
        layer.unmerge()


def test_fused_gpt2_conv1d_fan_in_fan_out():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    conv1d = pytorch_utils.Conv1D(12, 4)  # weight (in=4, out=12)
    layer = LoRAFusedLinear(conv1d, (4, 4, 4), (True, False, True), r=2, fan_in_fan_out=True,
                            init_lora_weights=False)
    x = torch.randn(3, 4)
    out = layer(x)
    with torch.no_grad():
        assert torch.allclose(out[:, 4:8], conv1d(x)[:, 4:8])  # k is left alone
        layer.merge()
        assert torch.allclose(conv1d(x), out, atol=1e-5)
    _ = layer.unmerge()
    with pytest.raises(ValueError, match="fan_in_fan_out=False"):
        LoRAFusedLinear(nn.Linear(4, 12), (4, 4, 4), (True, False, True), fan_in_fan_out=True)
    with pytest.raises(ValueError, match="sum to 11"):
        LoRAFusedLinear(nn.Linear(4, 12), (4, 4, 3), (True, False, True))
    _only_lora_grads(layer, layer(x))


# ---------------------------------------------------------------- nn.MultiheadAttention
def test_mha_equals_peft_and_merges():
    """Equal to PEFT on in_proj; on out_proj PEFT 0.21.2 adds the update twice (W + 2ΔW, both in
    forward and merge: huggingface/peft PR #3774, open), and this layer adds it once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    base0 = copy.deepcopy(model[0])
    ours = LoRAMultiheadAttention(copy.deepcopy(model[0]), r=2, lora_alpha=4, init_lora_weights=False)
    assert ours.lora_B.shape == (24, 2) and ours.out_proj_lora_B.shape == (8, 2)
    theirs = _peft(model, ["0"], r=2, lora_alpha=4)
    layer = theirs.base_model.model[0]
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
        layer.base_layer.out_proj.lora_A["default"].weight.copy_(ours.out_proj_lora_A)
        d_in, d_out = ours.delta_weights()
        reference = copy.deepcopy(base0)  # W0 + ΔW written by hand
        reference.in_proj_weight += d_in
        reference.out_proj.weight += d_out
        mine = ours(x, x, x)[0]
        assert (reference(x, x, x)[0] - mine).abs().max() <= 1e-5
        layer.base_layer.out_proj.lora_B["default"].weight.copy_(ours.out_proj_lora_B)
        twice = copy.deepcopy(reference)
        twice.out_proj.weight += d_out
        assert (layer(x, x, x)[0] - twice(x, x, x)[0]).abs().max() <= 1e-5  # PEFT's double update
        layer.base_layer.out_proj.lora_B["default"].weight.zero_()
        ours.out_proj_lora_B.zero_()
        assert (layer(x, x, x)[0] - ours(x, x, x)[0]).abs().max() <= 1e-5  # in_proj: equal
    torch.manual_seed(1)
    with torch.no_grad():
        ours.out_proj_lora_B.normal_()
        out = ours(x, x, x)[0]
        ours.merge()
        assert torch.allclose(ours(x, x, x)[0], out, atol=1e-5)
        ours.unmerge()
        assert torch.allclose(ours.base.in_proj_weight, base0.in_proj_weight, atol=1e-6)
    _only_lora_grads(ours, ours(x, x, x)[0])
    with pytest.raises(ValueError, match="kdim = vdim"):
        LoRAMultiheadAttention(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))


# ---------------------------------------------------------------- apply_lora dispatch
class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.embed(ids)  # (b, T, 8)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (b, T, 8)
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.head(h)


def test_apply_lora_dispatches_by_type_and_state_dict_round_trips():
    from lora_helpers import apply_lora, lora_state_dict, load_lora_state_dict, merge_lora, unmerge_lora

    torch.manual_seed(0)
    model = _Mixed()
    apply_lora(model, ["embed", "conv", "attn", "head"], r=2)
    kinds = {n: type(model.get_submodule(n)).__name__ for n in ("embed", "conv", "attn", "head")}
    assert kinds == {"embed": "LoRAEmbedding", "conv": "LoRAConv1d", "attn": "LoRAMultiheadAttention",
                     "head": "LoRALinear"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"embed.lora_embedding_A", "embed.lora_embedding_B", "conv.lora_A", "conv.lora_B",
                         "attn.lora_A", "attn.lora_B", "attn.out_proj_lora_A", "attn.out_proj_lora_B",
                         "head.lora_A", "head.lora_B"}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    ids = torch.randint(0, 12, (2, 5))
    with torch.no_grad():
        out = model(ids)
        saved = lora_state_dict(model)
        assert set(saved) == trainable
        merge_lora(model)
        assert torch.allclose(model(ids), out, atol=1e-4)
        unmerge_lora(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            if p.requires_grad:
                p.zero_()
        load_lora_state_dict(other, saved)
        assert torch.allclose(other(ids), out, atol=1e-5)
    with pytest.raises(ValueError, match="use_dora=True is implemented for linear layers only"):
        apply_lora(_Mixed(), ["conv"], use_dora=True)


def test_save_peft_adapter_embedding_and_conv_load_in_peft_with_equal_outputs(tmp_path):
    from lora_helpers import apply_lora, save_peft_adapter

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(12, 8)
            self.conv = nn.Conv1d(8, 8, 3, padding=1)

        def forward(self, ids):
            return self.conv(self.embed(ids).transpose(1, 2))

    torch.manual_seed(0)
    base = Net()
    ours = apply_lora(copy.deepcopy(base), ["embed", "conv"], r=2, lora_alpha=4)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.normal_()
    save_peft_adapter(ours, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _peft_module().PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    ids = torch.randint(0, 12, (2, 6))
    with torch.no_grad():
        assert (theirs(ids) - ours(ids)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="'attn': an nn.MultiheadAttention LoRA layer"):
        save_peft_adapter(apply_lora(_Mixed(), ["attn"], r=2), tmp_path / "x")
    fused = nn.Sequential(LoRAFusedLinear(nn.Linear(4, 12), [4, 4, 4], [True, False, True], r=1))
    with pytest.raises(ValueError, match="'0': a fused-projection LoRA layer"):
        save_peft_adapter(fused, tmp_path / "z")
    dilated = nn.Sequential(nn.Conv1d(2, 2, 3, dilation=2))
    with pytest.raises(ValueError, match="dilation or a padding mode"):
        save_peft_adapter(apply_lora(dilated, ["0"], r=1), tmp_path / "y")


def test_new_layers_plug_in_through_the_wrapper_table_and_the_protocol():
    from lora_helpers import LORA_WRAPPERS, LoRALayer, apply_lora, disable_lora, merge_and_unload

    assert {nn.Embedding, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention, nn.Linear} <= set(LORA_WRAPPERS)
    for cls in (LoRALinear, LoRAEmbedding, LoRAConv1d, LoRAConv2d, LoRAFusedLinear, LoRAMultiheadAttention):
        assert issubclass(cls, LoRALayer), cls
    torch.manual_seed(0)
    base = _Mixed()
    ids = torch.randint(0, 12, (2, 5))
    with torch.no_grad():
        expected = base(ids)
    model = apply_lora(copy.deepcopy(base), ["embed", "conv", "attn", "head"], r=2,
                       init_lora_weights=False)  # ΔW ≠ 0 in every layer
    with torch.no_grad():
        adapted = model(ids)
        assert (adapted - expected).abs().max() > 1e-3
        with disable_lora(model):
            assert torch.allclose(model(ids), expected, atol=1e-6)
        assert torch.equal(model(ids), adapted)
        plain = merge_and_unload(model)
        assert {type(plain.get_submodule(n)) for n in ("embed", "conv", "attn", "head")} == {
            nn.Embedding, nn.Conv1d, nn.MultiheadAttention, nn.Linear}
        assert torch.allclose(plain(ids), adapted, atol=1e-4)  # float32 sums of values up to ~60


def test_apply_lora_rolls_back_when_a_new_layer_type_refuses():
    from lora_helpers import apply_lora

    model = _Mixed()
    model.conv = nn.Conv1d(8, 8, 3, padding=1, groups=2)  # refused by LoRAConv1d, after embed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="groups=2"):
        apply_lora(model, ["embed", "conv"], r=2)
    assert type(model.embed) is nn.Embedding and type(model.conv) is nn.Conv1d
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _Stack(nn.Module):
    """ids (b, T) → embed_tokens (b, T, 6) → conv1 (b, 5, ⌈T/2⌉) → conv2 (b, 4, ⌈T/2⌉, 2) → head (b, 3)."""

    def __init__(self, vocab=11, kernel=(3, 2), dilation=1):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, 6)
        self.conv1 = nn.Conv1d(6, 5, 3, stride=2, padding=1, dilation=dilation)
        self.conv2 = nn.Conv2d(5, 4, kernel, stride=(1, 2), padding=(1, 0))
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        h = self.conv1(self.embed_tokens(ids).transpose(1, 2))  # (b, 5, L)
        h = self.conv2(h.unsqueeze(-1).expand(-1, -1, -1, 4))  # (b, 4, L', 2)
        return self.head(h.mean((-1, -2)))


def _grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))


def _peft_saved(directory, base: nn.Module, **kw) -> nn.Module:
    """PEFT's model of ``base`` with every trainable tensor random (B ≠ 0), saved by PEFT."""
    kw = {"r": 2, "lora_alpha": 4, "target_modules": ["embed_tokens", "conv1", "conv2", "head"], **kw}
    theirs = _peft(copy.deepcopy(base), kw.pop("target_modules"), **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:  # lora_A/B, lora_embedding_A/B, and biases with bias != "none"
                p.normal_(std=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Setting save_embedding_layers to True ..."
        theirs.save_pretrained(directory)
    return theirs.eval()


@pytest.mark.parametrize("kw, ranks", [
    ({"target_modules": ["embed_tokens"]}, {"embed_tokens": 2}),
    ({"target_modules": ["conv1"], "lora_dropout": 0.1}, {"conv1": 2}),
    ({"target_modules": ["conv2"], "use_rslora": True}, {"conv2": 2}),
    ({"rank_pattern": {"conv2": 3, "embed_tokens": 4}, "alpha_pattern": {"head": 8, "conv1": 1},
      "use_rslora": True, "lora_dropout": 0.1, "bias": "lora_only"},
     {"embed_tokens": 4, "conv1": 2, "conv2": 3, "head": 2}),
    ({"target_modules": ["embed_tokens", "head"], "init_lora_weights": "pissa"},  # PiSSA: head only
     {"embed_tokens": 2, "head": 2}),
], ids=["embedding", "conv1d", "conv2d", "mixed-patterns-rslora-bias", "pissa-with-embedding"])
def test_load_peft_adapter_reads_peft_embedding_and_conv_files(tmp_path, kw, ranks):
    from lora_helpers import load_peft_adapter, lora_layers

    torch.manual_seed(0)
    base = _Stack()
    theirs = _peft_saved(tmp_path, base, **kw)
    ours = load_peft_adapter(copy.deepcopy(base), tmp_path).eval()
    assert {n: layer.r for n, layer in lora_layers(ours)} == ranks
    ids = torch.randint(0, 11, (3, 7))
    with torch.no_grad():
        out = ours(ids)
        assert (out - theirs(ids)).abs().max() <= 1e-5
        assert (out - base(ids)).abs().max() > 1e-2  # the adapter changes the output
    trainable = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, theirs)]
    assert trainable[0] == trainable[1]


def test_load_peft_adapter_round_trips_embedding_and_conv_here_and_to_peft(tmp_path):
    from lora_helpers import apply_lora, load_peft_adapter, save_peft_adapter

    torch.manual_seed(0)
    base = _Stack()
    ours = apply_lora(copy.deepcopy(base), ["embed_tokens", "conv1", "conv2", "head"], r=2,
                      lora_alpha=3, use_rslora=True)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    save_peft_adapter(ours, tmp_path)
    loaded = load_peft_adapter(copy.deepcopy(base), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _peft_module().PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    ids = torch.randint(0, 11, (3, 7))
    with torch.no_grad():
        out = ours(ids)
        assert (out - base(ids)).abs().max() > 1e-2
        assert (loaded(ids) - out).abs().max() <= 1e-5
        assert (theirs(ids) - out).abs().max() <= 1e-5


@pytest.mark.parametrize("saved_from, kw, load_into, message", [
    (_Stack, {"target_modules": ["conv2"]}, lambda: _Stack(kernel=(3, 3)),
     r"conv2.lora_A.weight has shape \(2, 5, 3, 2\), expected \(2, 5, 3, 3\) .*kernel_size=\(3, 3\)"),
    (_Stack, {"target_modules": ["embed_tokens"]}, lambda: _Stack(vocab=12),
     r"lora_embedding_A has shape \(2, 11\), expected \(2, 12\) .*num_embeddings=12"),
    (_Stack, {"target_modules": ["conv1", "head"], "use_dora": True}, _Stack,
     r"'conv1' \(Conv1d\) is an nn.Conv1d and the config has use_dora=true: DoRA is implemented "
     r"here for nn.Linear only"),
    (_Stack, {"target_modules": ["embed_tokens"], "use_dora": True}, _Stack,
     "'embed_tokens' .* use_dora=true: DoRA is implemented here for nn.Linear only"),
    (_grouped, {"target_modules": ["0"]}, _grouped,
     r"'0' \(Conv2d\) is an nn.Conv2d with groups=2: PEFT gives it a grouped 1×1 lora_B"),
    (_Stack, {"target_modules": ["conv1"]}, lambda: _Stack(dilation=2),
     r"'conv1' .* dilation=\(2,\) .*PEFT 0.21.2 builds its lora_A without them"),
    (_Stack, {"target_modules": ["embed_tokens"], "r": 8}, _Stack,
     r"r=8 .*above min\(num_embeddings, embedding_dim\) = 6"),
], ids=["conv-kernel", "embedding-table", "dora-conv", "dora-embedding", "groups", "dilation",
        "embedding-rank"])
def test_load_peft_adapter_refuses_what_does_not_fit_and_changes_nothing(
        tmp_path, saved_from, kw, load_into, message):
    from lora_helpers import load_peft_adapter, lora_layers

    torch.manual_seed(0)
    _peft_saved(tmp_path, saved_from(), **kw)
    model = load_into()
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(model, tmp_path)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
