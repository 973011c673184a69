"""SVD rank analysis: Eckart–Young, energy/stable/effective rank, the paper's §7 measures."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (amplification_factor, effective_rank, energy_rank,
                          low_rank_approximation, projection_norm, reconstruction_error,
                          singular_values, stable_rank, subspace_similarity,
                          subspace_similarity_grid, top_singular_vectors)

pytestmark = pytest.mark.filterwarnings("error")

shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))
seeds = st.integers(0, 2**32 - 1)
fast = settings(deadline=None, max_examples=25)  # exact SVD identities: 25 shapes/ranks suffice


def random_matrix(shape, seed, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def orthogonal(n, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


def with_spectrum(sigmas, m, n, seed=0):
    """An (m, n) matrix with exactly these singular values (zeros added up to min(m, n))."""
    s = np.zeros(min(m, n))
    s[:len(sigmas)] = sigmas
    return orthogonal(m, seed)[:, :len(s)] @ np.diag(s) @ orthogonal(n, seed + 1)[:len(s)]


def test_singular_values_descending_float32_cpu():
    w = with_spectrum([5.0, 3.0, 0.5], 6, 4)
    s = singular_values(w)
    assert s.dtype == torch.float32 and s.device.type == "cpu" and s.shape == (4,)
    torch.testing.assert_close(s, torch.tensor([5.0, 3.0, 0.5, 0.0]), atol=1e-6, rtol=1e-6)


def test_svd_runs_in_float64():
    # float32 arithmetic would bury the 1e-9 direction under ~1e-7 rounding noise.
    w = with_spectrum([1.0, 1e-3, 1e-9], 4, 3)
    torch.testing.assert_close(singular_values(w).double(), torch.tensor([1.0, 1e-3, 1e-9],
                               dtype=torch.float64), rtol=1e-5, atol=0)
    assert reconstruction_error(w, 2) == pytest.approx(1e-9, rel=1e-5)


# ---------------------------------------------------------------- Eckart–Young–Mirsky

@fast
@given(shape=shapes, seed=seeds, data=st.data())
def test_error_equals_tail_energy_and_approximation_has_rank_r(shape, seed, data):
    w = random_matrix(shape, seed)
    r = data.draw(st.integers(1, min(shape)))
    s = np.linalg.svd(w, compute_uv=False)
    tail = math.sqrt((s[r:] ** 2).sum() / (s ** 2).sum())
    assert reconstruction_error(w, r) == pytest.approx(tail, abs=1e-9)
    w_r = low_rank_approximation(w, r)
    assert w_r.shape == shape and w_r.dtype == torch.float32
    assert np.linalg.matrix_rank(w_r.double().numpy(), tol=1e-4) <= r
    np.testing.assert_allclose(np.linalg.norm(w - w_r.double().numpy()) / np.linalg.norm(w),
                               tail, atol=1e-5)


@fast
@given(shape=shapes, seed=seeds, data=st.data())
def test_no_random_rank_r_matrix_does_better(shape, seed, data):
    m, n = shape
    r = data.draw(st.integers(1, min(shape)))
    w = random_matrix(shape, seed)
    best = reconstruction_error(w, r)
    rng = np.random.default_rng(seed + 1)
    for _ in range(20):
        candidate = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))  # rank <= r
        # Give the candidate its best scale too (least squares), to make the contest fair.
        c = (candidate * w).sum() / max((candidate ** 2).sum(), 1e-300)
        assert np.linalg.norm(w - c * candidate) / np.linalg.norm(w) >= best - 1e-9


def test_full_rank_approximation_is_exact_and_lower_rank_is_not():
    w = with_spectrum([4.0, 2.0, 1.0], 3, 5)
    assert reconstruction_error(w, 3) == pytest.approx(0.0, abs=1e-12)
    assert reconstruction_error(w, 1) == pytest.approx(math.sqrt(5 / 21))
    torch.testing.assert_close(low_rank_approximation(w, 3), torch.tensor(w, dtype=torch.float32))


# ---------------------------------------------------------------- energy, stable, effective rank

@pytest.mark.parametrize("threshold,expected", [
    (0.1, 1), (9 / 14, 1), (0.65, 2), (0.9, 2), (13 / 14, 2), (0.93, 3), (1.0, 3)])
def test_energy_rank_on_constructed_spectrum(threshold, expected):
    w = with_spectrum([3.0, 2.0, 1.0], 7, 5)  # energies 9, 4, 1 of 14 (two zero directions)
    assert energy_rank(w, threshold) == expected


def test_energy_rank_of_equal_singular_values_hits_exact_fractions():
    w = with_spectrum([1.0] * 10, 12, 10, seed=7)  # computed σ_i are 1 only up to rounding
    assert [energy_rank(w, k / 10) for k in range(1, 11)] == list(range(1, 11))


def test_energy_rank_default_threshold_is_ninety_percent():
    w = with_spectrum([3.0, 1.0, 1.0, 1.0], 4, 4)  # 9/12 = 0.75, 10/12, 11/12 = 0.917
    assert energy_rank(w) == 3 and energy_rank(w, 0.8) == 2


@pytest.mark.parametrize("sigmas,stable,effective", [
    ([1.0, 1.0, 1.0, 1.0], 4.0, 4.0),                   # identity-like: every measure = 4
    ([2.0], 1.0, 1.0),                                  # rank 1
    ([2.0, 1.0], 5 / 4, math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))),
    ([3.0, 3.0, 0.0], 2.0, 2.0),                        # rank-deficient: zeros do not count
])
def test_stable_and_effective_rank_exact_values(sigmas, stable, effective):
    w = with_spectrum(sigmas, 5, len(sigmas) + 1)
    assert stable_rank(w) == pytest.approx(stable, rel=1e-9)
    assert effective_rank(w) == pytest.approx(effective, rel=1e-9)


@fast
@given(shape=shapes, seed=seeds, scale=st.floats(1e-3, 1e3))
def test_ranks_lie_between_one_and_rank(shape, seed, scale):
    w = random_matrix(shape, seed, scale)
    rank = np.linalg.matrix_rank(w)
    assert 1 - 1e-9 <= stable_rank(w) <= rank + 1e-9
    assert 1 - 1e-9 <= effective_rank(w) <= rank + 1e-9
    assert 1 <= energy_rank(w, 0.5) <= energy_rank(w, 0.9) <= energy_rank(w, 1.0) == rank
    # All three measures ignore the overall scale.
    assert stable_rank(w * 7) == pytest.approx(stable_rank(w), rel=1e-9)
    assert effective_rank(w * 7) == pytest.approx(effective_rank(w), rel=1e-9)


def test_zero_matrix_has_rank_zero_everywhere():
    z = np.zeros((4, 3))
    assert (energy_rank(z), stable_rank(z), effective_rank(z), reconstruction_error(z, 1)) == \
        (0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------- subspace similarity (§7.2)

lora_a = st.tuples(st.integers(1, 6), st.integers(6, 12), seeds)  # (r, in_features, seed)


@fast
@given(a=lora_a)
def test_similarity_of_a_with_itself_is_one(a):
    r, n, seed = a
    a1 = random_matrix((r, n), seed)
    for i in range(1, r + 1):
        assert subspace_similarity(a1, a1, i, i) == pytest.approx(1.0, abs=1e-9)


@fast
@given(a=lora_a, r2=st.integers(1, 6), seed2=seeds)
def test_grid_matches_pairwise_function_and_lies_in_unit_interval(a, r2, seed2):
    r1, n, seed = a
    a1, a2 = random_matrix((r1, n), seed), random_matrix((r2, n), seed2)
    grid = subspace_similarity_grid(a1, a2)
    assert grid.shape == (r1, r2) and grid.dtype == torch.float32
    assert grid.min() >= 0 and grid.max() <= 1
    for i in range(1, r1 + 1):
        for j in range(1, r2 + 1):
            phi = subspace_similarity(a1, a2, i, j)
            assert 0 <= phi <= 1
            assert grid[i - 1, j - 1].item() == pytest.approx(phi, abs=1e-6)


@fast
@given(a=lora_a, r2=st.integers(1, 6), seed2=seeds)
def test_similarity_depends_only_on_the_row_space(a, r2, seed2):
    r1, n, seed = a
    a1, a2 = random_matrix((r1, n), seed), random_matrix((r2, n), seed2)
    m = orthogonal(r1, seed + 7) @ np.diag(np.linspace(0.5, 2.0, r1))  # invertible, cond <= 4
    # The full top-r1 subspace of M @ A1 is A1's row space, so φ(·, ·, r1, j) is unchanged.
    for j in range(1, r2 + 1):
        assert subspace_similarity(m @ a1, a2, r1, j) == \
            pytest.approx(subspace_similarity(a1, a2, r1, j), abs=1e-7)
    # A non-zero scale keeps every singular direction, so the whole grid is unchanged.
    torch.testing.assert_close(subspace_similarity_grid(-3.0 * a1, a2),
                               subspace_similarity_grid(a1, a2), atol=1e-6, rtol=0)


def test_similarity_is_zero_for_orthogonal_one_for_nested_half_for_half_shared():
    q = orthogonal(10, 3)
    rng = np.random.default_rng(0)
    a1 = rng.standard_normal((3, 3)) @ q[:3]     # rows span q_0..q_2
    a2 = rng.standard_normal((4, 4)) @ q[3:7]    # rows span q_3..q_6
    assert subspace_similarity_grid(a1, a2).abs().max() < 1e-7
    a3 = rng.standard_normal((5, 5)) @ q[:5]     # contains a1's row space
    assert subspace_similarity(a1, a3, 3, 5) == pytest.approx(1.0, abs=1e-9)
    # a2 and a3 share exactly q_3, q_4: 2 of min(4, 5) dimensions.
    assert subspace_similarity(a2, a3, 4, 5) == pytest.approx(0.5, abs=1e-9)


def test_similarity_of_two_directions_is_their_squared_cosine():
    a1 = np.array([[1.0, 0.0, 0.0]])
    a2 = np.array([[1.0, 1.0, 0.0]])  # 45 degrees: cos² = 1/2
    assert subspace_similarity(a1, a2, 1, 1) == pytest.approx(0.5)


# ---------------------------------------------------------------- amplification (§7.3)

def test_amplification_factor_on_a_constructed_example():
    w = np.diag([10.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    dw = np.zeros((6, 6))
    dw[4, 4], dw[5, 5] = 2.0, 1.0  # ΔW uses W's two weakest directions
    # r=2: ||ΔW||_F = √5, U^T W V^T = diag(1, 0.5) with norm √1.25, factor 2.
    assert amplification_factor(dw, w, 2) == pytest.approx(2.0)
    assert amplification_factor(dw, w, 1) == pytest.approx(math.sqrt(5))  # U^T W V^T = [1]
    # Rotating both matrices by the same orthogonal maps changes nothing.
    p, q = orthogonal(6, 1), orthogonal(6, 2)
    assert amplification_factor(p @ dw @ q, p @ w @ q, 2) == pytest.approx(2.0)
    # Left and right directions differ: ΔW = 2 e4 e1^T sees only W[4, 1] = 0.25.
    w2 = w.copy()
    w2[4, 1] = 0.25
    dw2 = np.zeros((6, 6))
    dw2[4, 1] = 2.0
    assert amplification_factor(dw2, w2, 1) == pytest.approx(8.0)
    assert amplification_factor(dw2[:, :4], w2[:, :4], 1) == pytest.approx(8.0)  # non-square
    # W with no component along ΔW's directions: infinite amplification.
    assert amplification_factor(dw, np.diag([1.0, 1, 1, 1, 0, 0]), 2) == math.inf


def test_projection_norm_with_table7_style_directions():
    w = with_spectrum([6.0, 3.0, 2.0, 1.0], 5, 4)
    # W's own top-2 directions capture √(36 + 9); the full bases capture all of ||W||_F.
    assert projection_norm(w, *top_singular_vectors(w, 2)) == pytest.approx(math.sqrt(45), 1e-6)
    assert projection_norm(w, *top_singular_vectors(w, 4)) == pytest.approx(np.linalg.norm(w), 1e-6)
    u, v = top_singular_vectors(w, 3)
    assert u.shape == (5, 3) and v.shape == (3, 4)
    torch.testing.assert_close(u.T @ u, torch.eye(3), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- inputs

ALL_ON_ONE_MATRIX = [
    lambda w: singular_values(w),
    lambda w: low_rank_approximation(w, 2),
    lambda w: reconstruction_error(w, 2),
    lambda w: energy_rank(w, 0.8),
    lambda w: stable_rank(w),
    lambda w: effective_rank(w),
    lambda w: subspace_similarity_grid(w, w[:2]),
    lambda w: amplification_factor(w, w * 2 + 1, 2),
]


@pytest.mark.parametrize("fn", ALL_ON_ONE_MATRIX)
def test_numpy_and_torch_inputs_agree(fn):
    w = random_matrix((5, 7), 0)
    expected = fn(w)
    for t in [torch.tensor(w), torch.tensor(w, dtype=torch.float32, requires_grad=True),
              nn.Parameter(torch.tensor(w))]:
        got = fn(t)
        assert type(got) is type(expected)
        if isinstance(got, torch.Tensor):
            torch.testing.assert_close(got, expected)
        else:
            assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_low_precision_and_integer_tensors_are_upcast(dtype):
    t = (torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    expected = np.linalg.svd(t.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(singular_values(t).numpy(), expected, rtol=1e-6)
    assert stable_rank(t) == pytest.approx((expected ** 2).sum() / expected[0] ** 2, rel=1e-9)


def test_results_do_not_track_gradients():
    w = torch.randn(4, 4, requires_grad=True)
    assert not low_rank_approximation(w, 2).requires_grad
    assert not subspace_similarity_grid(w, w).requires_grad


W = np.ones((4, 6))


def test_similarity_refuses_directions_past_the_numerical_rank():
    # two zero matrices have no directions at all; SVD would still return (arbitrary) ones
    zero = torch.zeros(2, 6)
    with pytest.raises(ValueError, match="i=1 is above the numerical rank 0 of a1"):
        subspace_similarity(zero, zero, 1, 1)
    rank_one = torch.outer(torch.tensor([1.0, 2.0]), torch.arange(6.0))  # (2, 6), rank 1
    full = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    assert 0 <= subspace_similarity(rank_one, full, 1, 2) <= 1
    with pytest.raises(ValueError, match="i=2 is above the numerical rank 1 of a1 \\(2, 6\\).*use i <= 1"):
        subspace_similarity(rank_one, full, 2, 2)
    with pytest.raises(ValueError, match="j=2 is above the numerical rank 1 of a2"):
        subspace_similarity(full, rank_one, 1, 2)


def test_effective_rank_ignores_zero_singular_values():
    # p = (3/4, 1/4, 0): the zero contributes 0·log 0 = 0, not NaN
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0, 0.0]))) == \
        pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-9)



@pytest.mark.parametrize("call,error,match", [
    (lambda: singular_values([[1.0, 2.0]]), TypeError, "got list"),
    (lambda: singular_values(nn.Linear(3, 2)), TypeError, "not the layer"),
    (lambda: singular_values(np.array([["a"]])), TypeError, "real numbers"),
    (lambda: singular_values(torch.ones(2, 2, dtype=torch.complex64)), TypeError, "complex64"),
    (lambda: singular_values(torch.ones(3)), ValueError, r"2-D matrix .* got shape \(3,\)"),
    (lambda: stable_rank(np.ones((2, 2, 2))), ValueError, r"got shape \(2, 2, 2\)"),
    (lambda: effective_rank(np.ones((0, 3))), ValueError, r"empty \(shape \(0, 3\)\)"),
    (lambda: energy_rank(np.array([[1.0, np.nan]])), ValueError, "NaN or inf"),
    (lambda: singular_values(torch.tensor([[1.0, float("inf")]])), ValueError, "NaN or inf"),
    (lambda: low_rank_approximation(W, 0), ValueError, r"r=0 is out of range: need 1 <= r <= 4"),
    (lambda: reconstruction_error(W, 5), ValueError, "r=5 is out of range"),
    (lambda: top_singular_vectors(W, 2.0), TypeError, "r must be an int, got 2.0"),
    (lambda: low_rank_approximation(W, True), TypeError, "r must be an int"),
    (lambda: energy_rank(W, 0.0), ValueError, r"threshold must be in \(0, 1\], got 0.0"),
    (lambda: energy_rank(W, 1.5), ValueError, "got 1.5"),
    (lambda: energy_rank(W, float("nan")), ValueError, "got nan"),
    (lambda: energy_rank(W, "0.9"), TypeError, "threshold must be a number"),
    (lambda: subspace_similarity(W, W, 0, 1), ValueError, "i=0 is out of range"),
    (lambda: subspace_similarity(W, W, 1, 5), ValueError, "j=5 is out of range: need 1 <= j <= 4"),
    (lambda: subspace_similarity(W, np.ones((4, 5)), 1, 1), ValueError, "same in_features"),
    (lambda: subspace_similarity_grid(W, np.ones((2, 7))), ValueError, r"a2 is \(2, 7\)"),
    (lambda: subspace_similarity_grid(W, None), TypeError, "a2 must be"),
    (lambda: amplification_factor(W, np.ones((6, 4)), 1), ValueError, "must have the same shape"),
    (lambda: amplification_factor(np.zeros((4, 6)), W, 1), ValueError, "all zeros"),
    (lambda: amplification_factor(W, W, 9), ValueError, "r=9 is out of range"),
    (lambda: projection_norm(W, np.ones((4, 2)), np.ones((3, 6))), ValueError, r"got u \(4, 2\)"),
    (lambda: projection_norm(W, np.ones((6, 2)), np.ones((2, 6))), ValueError, "need u"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
