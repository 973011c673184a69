"""NF4 quantization (QLoRA, arXiv 2305.14314 §3): levels, round trip, bytes, NF4Linear, QLoRA training."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lora_helpers as L
from lora_helpers import (NF4_LEVELS, LoRALinear, NF4Linear, apply_lora, dequantize_model,
                          merge_lora, nf4_levels, quantize_model, quantize_nf4)

# bitsandbytes' published NF4 table: bitsandbytes-foundation/bitsandbytes,
# bitsandbytes/backends/utils.py, ``_NF4_QUANT_TABLE`` (commit 0155ecc); the same 16 values are
# listed in the QLoRA paper's appendix ("NormalFloat 4-bit data type") and are what
# bitsandbytes/functional.py ``create_normal_map(offset=0.9677083)`` computes.
PUBLISHED_NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=torch.float32)


# ---------------------------------------------------------------- the levels

def test_derived_levels_equal_the_published_table():
    assert nf4_levels().dtype == torch.float32 and nf4_levels().shape == (16,)
    assert torch.allclose(nf4_levels(), PUBLISHED_NF4, rtol=0, atol=2e-7)
    assert torch.equal(NF4_LEVELS, nf4_levels())


def test_the_remaining_difference_is_float32_rounding_in_bitsandbytes_recipe():
    # bitsandbytes takes the probabilities in float32 (torch.linspace's default) and divides in
    # float32; repeating exactly that reproduces its table bit for bit, so our float64 derivation
    # differs from it only by those roundings (at most ~3 float32 ulps).
    p = torch.linspace(0.9677083, 0.5, 9)[:-1]  # float32
    n = torch.linspace(0.9677083, 0.5, 8)[:-1]
    v = torch.cat([torch.special.ndtri(p.double()).float(),
                   (-torch.special.ndtri(n.double())).float(), torch.zeros(1)]).sort().values
    assert torch.equal(v / v.max(), PUBLISHED_NF4)


def test_level_structure_exact_zero_ends_and_asymmetry():
    levels = NF4_LEVELS
    assert torch.all(levels[1:] > levels[:-1])                      # strictly increasing
    assert levels[7].item() == 0.0                                  # an exact zero
    assert levels[0].item() == -1.0 and levels[15].item() == 1.0    # both ends exact
    assert int((levels > 0).sum()) == 8 and int((levels < 0).sum()) == 7
    # asymmetric: the inner positive levels are not mirror images of the negative ones
    assert not torch.allclose(-levels[1:7].flip(0), levels[9:15], atol=1e-3)


def test_levels_are_normal_quantiles_at_equally_spaced_probabilities():
    # undo the normalisation: Φ(level · Φ⁻¹(p_max)) must step evenly from 0.5 to p_max
    p_max = ((1 - 1 / 30) + (1 - 1 / 32)) / 2
    scale = torch.special.ndtri(torch.tensor(p_max, dtype=torch.float64))
    pos = torch.special.ndtr(NF4_LEVELS[7:].double() * scale)  # (9,): 0.5 ... p_max
    neg = torch.special.ndtr(-NF4_LEVELS[:8].flip(0).double() * scale)  # (8,): 0.5 ... p_max
    assert torch.allclose(pos, torch.linspace(0.5, p_max, 9, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(neg, torch.linspace(0.5, p_max, 8, dtype=torch.float64), atol=1e-6)


# ---------------------------------------------------------------- round trip

def _error_bound(w: torch.Tensor, block_size: int, absmax: torch.Tensor) -> torch.Tensor:
    """Per element: half the gap between the two levels around w/absmax, times absmax."""
    x = w.reshape(-1, block_size).double()  # (n_blocks, b)
    a = absmax.double()[:, None]
    normalised = (x / torch.where(a > 0, a, torch.ones_like(a))).clamp(-1, 1)
    levels = NF4_LEVELS.double()
    j = torch.searchsorted(levels, normalised.contiguous()).clamp(1, 15)  # levels[j-1] <= x <= levels[j]
    gap = levels[j] - levels[j - 1]
    return (gap / 2 * a).reshape(w.shape)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), cols_blocks=st.integers(1, 4), block=st.sampled_from([2, 16, 64]),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_round_trip_within_half_the_local_level_gap(rows, cols_blocks, block, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols_blocks * block, generator=g) * scale
    q = quantize_nf4(w, block_size=block)
    err = (q.dequantize() - w).abs().double()
    bound = _error_bound(w, block, q.absmax)
    assert torch.all(err <= bound * (1 + 1e-6) + 1e-6 * scale)
    assert q.dequantize().shape == w.shape and q.dequantize().dtype == w.dtype


def test_codes_are_the_nearest_level():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    q = quantize_nf4(w, block_size=64)
    normalised = w.reshape(-1, 64) / q.absmax[:, None]
    nearest = (normalised.reshape(-1, 1) - NF4_LEVELS).abs().argmin(dim=1)  # (n,)
    assert torch.equal(q.level_indices().long(), nearest)
    by_nibble = NF4_LEVELS[q.level_indices().long()].view(-1, 64) * q.absmax[:, None]
    assert torch.equal(q.dequantize(), by_nibble.view(w.shape))   # the byte-pair lookup agrees
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == w.numel() // 2


def test_the_absmax_element_and_zero_blocks_are_exact():
    torch.manual_seed(0)
    w = torch.randn(4, 64)
    w[1] = 0.0                          # an all-zero block
    w[2, 5] = -10.0                     # a negative block maximum
    deq = quantize_nf4(w, block_size=64).dequantize()
    assert torch.equal(deq[1], torch.zeros(64))
    double = quantize_nf4(w, block_size=64, double_quant=True).dequantize()
    assert torch.equal(double[1], torch.zeros(64)) and torch.isfinite(double).all()
    assert deq[2, 5].item() == -10.0
    i = w[0].abs().argmax()
    assert deq[0, i].item() == w[0, i].item()


def test_dequantize_keeps_dtype_and_odd_numel_packs_half_a_byte():
    w = torch.randn(3, 5, dtype=torch.bfloat16)  # 15 elements, blocks of 5
    q = quantize_nf4(w, block_size=5)
    assert q.dequantize().dtype == torch.bfloat16 and q.dequantize().shape == (3, 5)
    assert q.codes.numel() == 8                     # ceil(15 / 2)
    assert q.nbytes == 8 + 3 * 4


def test_nf4_beats_a_uniform_4bit_grid_on_normal_weights():
    # the reason for "normal float": same blocks, same absmax, 16 evenly spaced levels instead
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    q = quantize_nf4(w)
    uniform = torch.linspace(-1, 1, 16)
    x = w.reshape(-1, 64) / q.absmax[:, None]
    u = uniform[(x.reshape(-1, 1) - uniform).abs().argmin(1)].reshape(-1, 64) * q.absmax[:, None]
    nf4_mse = (q.dequantize() - w).pow(2).mean()
    uniform_mse = (u.reshape(w.shape) - w).pow(2).mean()
    assert nf4_mse < 0.9 * uniform_mse   # 0.0084 vs 0.0101 here: about 17% lower


# ---------------------------------------------------------------- bytes

def test_bytes_without_double_quant_are_4_5_bits_per_parameter():
    q = quantize_nf4(torch.randn(64, 128), block_size=64)
    assert q.nbytes == 64 * 128 // 2 + 4 * (64 * 128 // 64)  # codes + one fp32 absmax per block
    assert q.bits_per_parameter == 4.5


def test_bytes_with_double_quant_are_the_papers_0_127_bits_of_constants():
    n = 256 * 256                      # 1,024 blocks of 64 -> 4 second-level blocks of 256
    q = quantize_nf4(torch.randn(256, 256), block_size=64, double_quant=True)
    assert q.nbytes == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4
    constants = Fraction(8, 64) + Fraction(32, 64 * 256)   # QLoRA §3: 8/64 + 32/(64·256)
    assert float(constants) == 0.126953125                  # "0.127 bits"
    assert Fraction(8 * q.nbytes, n) == 4 + constants + Fraction(32, n)   # + the fp32 offset
    assert 0.5 - float(constants) == pytest.approx(0.373, abs=1e-3)        # the saving


@settings(max_examples=30, deadline=None)
@given(n_blocks=st.integers(1, 600), block=st.sampled_from([2, 8, 64]), dq=st.booleans())
def test_byte_count_formula(n_blocks, block, dq):
    q = quantize_nf4(torch.randn(n_blocks * block), block_size=block, double_quant=dq)
    n = n_blocks * block
    expected = math.ceil(n / 2) + (n_blocks + 4 * math.ceil(n_blocks / 256) + 4 if dq else 4 * n_blocks)
    assert q.nbytes == expected


@settings(max_examples=30, deadline=None)
@given(n_blocks=st.integers(1, 700), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_double_quant_reconstructs_every_absmax_within_half_a_log_step(n_blocks, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_blocks * 64, generator=g) * scale
    exact = quantize_nf4(w).absmax
    q = quantize_nf4(w, double_quant=True)
    step = float(q.absmax_offset)
    bound = 2 ** (step / 2) - 1 + 1e-5
    assert torch.all(((q.block_absmax() - exact).abs() / exact) <= bound)
    assert bound < 0.01  # normal weights: under 1% for every block
    assert q.absmax_codes.dtype == torch.int8 and q.absmax_offset.dtype == torch.float32


def test_double_quant_resolves_small_blocks_among_normal_ones():
    """Blocks 100x smaller than their neighbours keep their accuracy (0.785 relative error with
    the mean-subtracted linear 8-bit code; about 0.094, as without double quantization, here)."""
    torch.manual_seed(0)
    w = torch.randn(64, 64 * 64)
    w[::8] *= 0.01  # one block row in eight is small
    small = slice(0, None, 8)

    def rel_error(q):
        d = q.dequantize()
        return float((d[small] - w[small]).norm() / w[small].norm())

    plain, dq = rel_error(quantize_nf4(w)), rel_error(quantize_nf4(w, double_quant=True))
    assert plain < 0.11 and dq < plain * 1.02
    q = quantize_nf4(w, double_quant=True)  # the 254 steps span the widest group exactly:
    assert int(q.absmax_codes.min()) == -127 and int(q.absmax_codes.max()) == 127
    zero = torch.zeros(4 * 64)
    zero[64:128] = torch.randn(64)  # all-zero blocks stay exactly zero, absmax included
    q = quantize_nf4(zero, double_quant=True)
    back = q.dequantize()
    assert torch.equal(back[:64], zero[:64]) and torch.equal(back[128:], zero[128:])
    assert q.block_absmax().tolist()[0] == 0 and q.block_absmax().tolist()[2:] == [0, 0]


# ---------------------------------------------------------------- against bitsandbytes itself

def test_codes_and_absmax_equal_bitsandbytes_when_it_is_installed():
    functional = pytest.importorskip("bitsandbytes.functional")  # not a dependency; CPU works
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    packed, state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    q = quantize_nf4(w, block_size=64)
    assert torch.equal(packed.flatten(), q.codes)          # same codes, same nibble order
    assert torch.equal(state.absmax, q.absmax)
    assert torch.allclose(functional.dequantize_4bit(packed, state), q.dequantize(), atol=1e-6)


# ---------------------------------------------------------------- NF4Linear

def test_nf4linear_forward_equals_linear_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    layer = NF4Linear.from_linear(linear)
    x = torch.randn(2, 5, 128)
    w = quantize_nf4(linear.weight).dequantize()
    assert torch.equal(layer(x), nn.functional.linear(x, w, linear.bias))
    assert torch.equal(layer.dequantized_weight(), w)
    assert not any(p.requires_grad for p in layer.parameters())
    assert set(layer.state_dict()) == {"bias", "codes", "absmax"}
    assert layer.nbytes == 128 * 48 // 2 + 4 * 128 * 48 // 64 + 4 * 48


def test_nf4linear_without_bias_double_quant_and_dtype_moves():
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(nn.Linear(64, 64, bias=False), double_quant=True)
    assert layer.bias is None and set(layer.state_dict()) == {"codes", "absmax_codes",
                                                              "absmax_scales", "absmax_offset"}
    y = layer(torch.randn(3, 64))
    layer64 = layer.to(torch.float64)
    assert layer64.dtype == torch.float64 and layer64.codes.dtype == torch.uint8
    y64 = layer64(torch.randn(3, 64, dtype=torch.float64))
    assert y64.dtype == torch.float64 and y64.shape == y.shape


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4linear_has_one_storage_so_loading_a_state_dict_changes_its_output(double_quant):
    # a second copy of the codes (once an NF4Tensor beside the buffers) went stale under assign=True
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(nn.Linear(64, 16), double_quant=double_quant)
    other = NF4Linear.from_linear(nn.Linear(64, 16), double_quant=double_quant)
    x = torch.randn(3, 64)
    for assign in (False, True):
        fresh = NF4Linear.from_linear(nn.Linear(64, 16), double_quant=double_quant)
        fresh.load_state_dict(other.state_dict(), assign=assign)
        assert torch.equal(fresh(x), other(x)) and torch.equal(fresh.dequantized_weight(),
                                                                other.dequantized_weight())
    assert not torch.equal(layer(x), other(x))
    assert layer.quantized_weight.codes.data_ptr() == layer.codes.data_ptr()  # a view, not a copy


def test_to_linear_and_dequantize_model_round_trip():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = NF4Linear.from_linear(linear)
    back = layer.to_linear()
    assert isinstance(back, nn.Linear) and not back.weight.requires_grad
    assert torch.equal(back.weight, layer.dequantized_weight()) and torch.equal(back.bias, linear.bias)


# ---------------------------------------------------------------- QLoRA: LoRA on an NF4 base

def _quantized_classifier():
    torch.manual_seed(0)
    model = L.TinyTransformerClassifier()
    return quantize_model(model, exclude_modules=["head"])


def test_quantize_model_replaces_every_linear_but_the_excluded():
    model = _quantized_classifier()
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, NF4Linear))}
    assert kinds["head"] is nn.Linear
    assert all(k is NF4Linear for n, k in kinds.items() if n != "head")
    assert sum(k is NF4Linear for k in kinds.values()) == 1 + 2 * 6   # patch_embed + 6 per block


def test_lora_on_an_nf4_base_starts_at_the_base_output_and_matches_autograd():
    torch.manual_seed(0)
    base = NF4Linear.from_linear(nn.Linear(64, 32))
    layer = LoRALinear(base, r=4, init_lora_weights=False)
    reference = LoRALinear(base.to_linear(), r=4)
    with torch.no_grad():
        reference.lora_A.copy_(layer.lora_A)
        reference.lora_B.copy_(layer.lora_B)
    x = torch.randn(6, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = layer(x), reference(x_ref)
    assert torch.allclose(out, out_ref, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    for a, b in [(x.grad, x_ref.grad), (layer.lora_A.grad, reference.lora_A.grad),
                 (layer.lora_B.grad, reference.lora_B.grad)]:
        assert torch.allclose(a, b, atol=1e-5)
    fresh = LoRALinear(base, r=4)
    assert torch.equal(fresh(x), base(x))   # B = 0: exactly the NF4 layer's output


def test_apply_lora_on_a_quantized_model_trains_only_a_and_b_and_keeps_the_base():
    model = _quantized_classifier()
    apply_lora(model, target_modules=["q_proj", "v_proj"], r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * 2 * 2
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    x, y = torch.rand(32, 8, 8), torch.randint(0, 10, (32,))
    L.train(model, x, y, epochs=3, lr=1e-2, progress=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())            # bit-identical base
    assert any(not torch.equal(after[k], v) for k, v in lora_before.items())   # A, B moved
    assert any(k.endswith("q_proj.base.codes") for k in frozen)


def test_merging_into_nf4_is_refused_and_dequantizing_first_merges_exactly():
    model = _quantized_classifier()
    apply_lora(model, target_modules=["q_proj", "head"], r=4, init_lora_weights=False)
    x = torch.rand(5, 8, 8)
    expected = model(x)
    with pytest.raises(ValueError, match="dequantize_model"):
        merge_lora(model)
    assert not any(layer.merged for _, layer in L.lora_layers(model))  # head untouched too
    with pytest.raises(ValueError, match="NF4Linear base"):
        model.blocks[0].attn.q_proj.merge()
    dequantize_model(model)
    assert not any(isinstance(m, NF4Linear) for m in model.modules())
    assert torch.allclose(model(x), expected, atol=1e-6)
    merged = L.merge_and_unload(model)
    assert torch.allclose(merged(x), expected, atol=1e-5)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("weight, error, match", [
    (torch.arange(128), TypeError, "floating point"),
    ([1.0, 2.0], TypeError, "torch.Tensor"),
    (torch.empty(0), ValueError, "empty"),
    (torch.tensor([1.0, float("nan")] * 32), ValueError, "NaN"),
])
def test_bad_weights(weight, error, match):
    with pytest.raises(error, match=match):
        quantize_nf4(weight)


def test_bad_block_sizes_and_flags():
    w = torch.randn(10, 10)
    with pytest.raises(ValueError, match=r"block_size=64 does not divide .* 100 elements"):
        quantize_nf4(w)
    with pytest.raises(ValueError, match="block_size"):
        quantize_nf4(w, block_size=0)
    with pytest.raises(TypeError, match="block_size"):
        quantize_nf4(w, block_size=4.0)
    with pytest.raises(TypeError, match="double_quant"):
        quantize_nf4(w, block_size=4, double_quant="yes")


def test_only_linear_layers_are_quantized():
    with pytest.raises(TypeError, match="nn.Linear, got Conv2d"):
        NF4Linear.from_linear(nn.Conv2d(1, 1, 3))
    layer = NF4Linear.from_linear(nn.Linear(64, 2))
    with pytest.raises(ValueError, match="already an NF4Linear"):
        NF4Linear.from_linear(layer)
    with pytest.raises(TypeError, match="quantize_nf4"):
        NF4Linear(torch.randn(4, 4))
    with pytest.raises(TypeError, match="nn.Linear, got Conv2d.*NF4Linear"):
        LoRALinear(nn.Conv2d(1, 1, 3))


def test_quantize_model_bad_names_and_block_sizes_change_nothing():
    torch.manual_seed(0)
    model = L.TinyTransformerClassifier()
    with pytest.raises(ValueError, match=r"\['nope'\] match no nn.Linear"):
        quantize_model(model, target_modules=["nope"])
    with pytest.raises(ValueError, match=r"block_size=256 does not divide .* 640 elements"):
        quantize_model(model, block_size=256)   # fails at the head (10·64), after the others
    assert not any(isinstance(m, NF4Linear) for m in model.modules())
    with pytest.raises(TypeError, match="module names"):
        quantize_model(model, exclude_modules=[3])
    with pytest.raises(TypeError, match="nn.Module"):
        quantize_model(torch.randn(3))


def test_multihead_attention_out_proj_is_left_alone():
    model = nn.Sequential(nn.Linear(64, 64))
    model.add_module("mha", nn.MultiheadAttention(64, 4))
    quantize_model(model)
    assert isinstance(model[0], NF4Linear) and isinstance(model.mha.out_proj, nn.Linear)


def test_pissa_needs_a_writable_base_and_dora_works_on_nf4():
    torch.manual_seed(0)
    base = NF4Linear.from_linear(nn.Linear(64, 32))
    with pytest.raises(ValueError, match="init_lora_weights='pissa'.*NF4Linear.*read-only"):
        LoRALinear(base, r=4, init_lora_weights="pissa")
    LoRALinear(base, r=4)  # plain LoRA on the same base is fine
    # QDoRA: DoRA on the dequantized weight, exactly as DoRA on the equivalent nn.Linear
    dora = LoRALinear(base, r=4, use_dora=True, init_lora_weights=False)
    plain = LoRALinear(base.to_linear(), r=4, use_dora=True, init_lora_weights=False)
    with torch.no_grad():
        plain.lora_A.copy_(dora.lora_A), plain.lora_B.copy_(dora.lora_B)
        plain.lora_magnitude_vector.copy_(dora.lora_magnitude_vector)
    x = torch.randn(3, 64)
    torch.testing.assert_close(dora(x), plain(x))
    with pytest.raises(ValueError, match="refusing to merge into a NF4Linear"):
        dora.merge()


def test_quantize_after_dora_and_pissa_on_an_nf4_model():
    torch.manual_seed(0)
    model = apply_lora(L.TinyTransformerClassifier(), ["q_proj", "v_proj"], r=2, use_dora=True)
    x = torch.randn(2, 1, 8, 8)
    quantize_model(model, exclude_modules=["head"])  # used to crash: 'NF4Linear' has no 'weight'
    assert model(x).isfinite().all()
    nf4 = _quantized_classifier()
    before = {k: v.clone() for k, v in nf4.state_dict().items()}
    with pytest.raises(ValueError, match="pissa.*read-only"):
        apply_lora(nf4, ["q_proj"], r=2, init_lora_weights="pissa")
    assert all(torch.equal(v, before[k]) for k, v in nf4.state_dict().items())
    merged = apply_lora(L.TinyTransformerClassifier(), ["q_proj"], r=2, init_lora_weights=False)
    L.merge_lora(merged)
    with pytest.raises(ValueError, match="merged LoRA layers.*unmerge_lora"):
        quantize_model(merged)
