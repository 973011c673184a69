"""Rank analysis of weight matrices with the SVD, and the subspace measures of the LoRA paper (§7).

Every function takes a 2-D matrix: a torch tensor (any dtype or device, with or without grad) or a
numpy array. The SVD is computed on a detached float64 CPU copy, so fp16/bf16/cuda inputs give
accurate answers and no gradient is tracked. Scalars come back as Python ``float``/``int``;
tensors come back as float32 CPU tensors.

For ``W`` of shape ``(m, n)`` with singular values ``σ_1 >= ... >= σ_k >= 0``, ``k = min(m, n)``:

- the best rank-r approximation keeps the top r singular triplets (Eckart–Young–Mirsky);
- the *energy* of the top-k directions is ``σ_1² + ... + σ_k²`` out of ``||W||_F² = Σ σ_i²``.

A zero matrix has rank 0; by the same token its energy, stable and effective ranks are 0.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._checks import as_matrix, check_int

__all__ = [
    "singular_values", "top_singular_vectors", "low_rank_approximation", "reconstruction_error",
    "energy_rank", "stable_rank", "effective_rank", "subspace_similarity",
    "subspace_similarity_grid", "projection_norm", "amplification_factor",
]

Matrix = torch.Tensor | np.ndarray


def _as_matrix(w: object, name: str = "w") -> torch.Tensor:
    """Check that ``w`` is a finite, non-empty 2-D matrix; return a detached float64 CPU copy."""
    return as_matrix(w, name, "its SVD is undefined")


def _check_rank(r: object, t: torch.Tensor, name: str = "r") -> int:
    m, n = t.shape
    return check_int(r, name, 1, min(m, n), f"a {m}x{n} matrix has min({m}, {n}) singular values")


def _low_rank(t: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(t, full_matrices=False)  # (m, k), (k,), (k, n)
    return (u[:, :r] * s[:r]) @ vh[:r]  # (m, r) @ (r, n) -> (m, n)


def singular_values(w: Matrix) -> torch.Tensor:
    """The singular values of ``w`` ``(m, n)``, descending: float32 tensor ``(min(m, n),)``."""
    return torch.linalg.svdvals(_as_matrix(w)).float()  # (k,)


def top_singular_vectors(w: Matrix, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-r singular directions of ``w`` ``(m, n)`` as ``(u, v)``, float32.

    ``u`` is ``(m, r)`` with the left singular vectors as *columns*; ``v`` is ``(r, n)`` with the
    right singular vectors as *rows* (``Vh[:r]`` of ``torch.linalg.svd``), so that
    ``w ≈ u @ diag(σ[:r]) @ v``. This is the ``(U, V)`` pair that :func:`projection_norm` takes.
    """
    t = _as_matrix(w)
    r = _check_rank(r, t)
    u, _, vh = torch.linalg.svd(t, full_matrices=False)  # (m, k), (k,), (k, n)
    return u[:, :r].float(), vh[:r].float()  # (m, r), (r, n)


def low_rank_approximation(w: Matrix, r: int) -> torch.Tensor:
    """The best rank-r approximation of ``w`` ``(m, n)`` by truncated SVD: float32 ``(m, n)``.

    Eckart–Young–Mirsky: no matrix of rank <= r is closer to ``w`` in Frobenius (or spectral)
    norm than ``U_r diag(σ_1..σ_r) V_r^T``.
    """
    t = _as_matrix(w)
    return _low_rank(t, _check_rank(r, t)).float()


def reconstruction_error(w: Matrix, r: int) -> float:
    """Relative Frobenius error ``||W - W_r||_F / ||W||_F`` of the best rank-r approximation.

    Equals ``sqrt(Σ_{i>r} σ_i² / Σ_i σ_i²)``: the share of energy in the dropped directions.
    0.0 for a zero matrix.
    """
    t = _as_matrix(w)
    residual = t - _low_rank(t, _check_rank(r, t))  # (m, n)
    total = torch.linalg.matrix_norm(t)
    return 0.0 if total == 0 else float(torch.linalg.matrix_norm(residual) / total)


def check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if not 0 < threshold <= 1:  # also catches NaN
        raise ValueError(f"threshold must be in (0, 1], got {threshold}; e.g. 0.9 for 90% energy")
    return float(threshold)


def energy_rank_of_spectrum(s: torch.Tensor, threshold: float) -> int:
    """Energy rank from the singular values ``s`` ``(k,)`` (float64, descending)."""
    energy = s ** 2  # (k,)
    if energy.sum() == 0:
        return 0
    cumulative = energy.cumsum(0) / energy.sum()  # (k,), non-decreasing, ends at 1
    k = int(torch.searchsorted(cumulative, cumulative.new_tensor([threshold - 1e-12]))) + 1
    return min(k, len(energy))


def energy_rank(w: Matrix, threshold: float = 0.9) -> int:
    """Smallest k with ``σ_1² + ... + σ_k² >= threshold · Σ σ_i²`` (up to 1e-12 rounding).

    ``threshold`` is in (0, 1]; ``threshold=1`` gives the numerical rank. 0 for a zero matrix.
    """
    threshold = check_threshold(threshold)
    return energy_rank_of_spectrum(torch.linalg.svdvals(_as_matrix(w)), threshold)


def stable_rank(w: Matrix) -> float:
    """``||W||_F² / ||W||_2² = Σ σ_i² / σ_1²``: between 1 and rank(W); 0.0 for a zero matrix."""
    s = torch.linalg.svdvals(_as_matrix(w))  # (k,)
    return 0.0 if s[0] == 0 else float((s ** 2).sum() / s[0] ** 2)


def effective_rank(w: Matrix) -> float:
    """Entropy effective rank (Roy & Vetterli, EUSIPCO 2007): ``exp(-Σ p_i log p_i)``.

    ``p_i = σ_i / Σ_j σ_j`` (with 0 log 0 = 0). Between 1 and rank(W); 0.0 for a zero matrix.
    """
    s = torch.linalg.svdvals(_as_matrix(w))  # (k,)
    if s.sum() == 0:
        return 0.0
    p = s[s > 0] / s.sum()  # (k',), a probability distribution
    return float(torch.exp(-(p * p.log()).sum()))


def _right_singular_bases(a1: Matrix, a2: Matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular vectors of two LoRA ``A`` matrices, as columns: ``(in, k1)``, ``(in, k2)``."""
    t1, t2 = _as_matrix(a1, "a1"), _as_matrix(a2, "a2")
    if t1.shape[1] != t2.shape[1]:
        raise ValueError(f"a1 and a2 must have the same in_features (columns): a1 is "
                         f"{tuple(t1.shape)}, a2 is {tuple(t2.shape)}; pass LoRA A matrices "
                         "(r, in_features) of the same layer")
    v1 = torch.linalg.svd(t1, full_matrices=False)[2].T  # (in, k1), k1 = min(r1, in)
    v2 = torch.linalg.svd(t2, full_matrices=False)[2].T  # (in, k2)
    return v1, v2


def subspace_similarity(a1: Matrix, a2: Matrix, i: int, j: int) -> float:
    """Normalized subspace similarity of the LoRA paper (§7.2, Eq. 4), in [0, 1].

    ``φ(A1, A2, i, j) = ||U1_i^T U2_j||_F² / min(i, j)``, where ``U1_i`` ``(in, i)`` holds the top-i
    right singular vectors of ``a1`` ``(r1, in_features)`` (its top input directions) and ``U2_j``
    ``(in, j)`` the top-j of ``a2`` ``(r2, in_features)``. 1 when one subspace contains the other,
    0 when they are orthogonal. ``1 <= i <= min(r1, in_features)``, likewise j, and neither may
    exceed its matrix's numerical rank (past it the singular directions are arbitrary: two zero
    matrices would score φ = 1). ``subspace_similarity_grid`` fills every entry; read it only up
    to the ranks.
    """
    v1, v2 = _right_singular_bases(a1, a2)
    i = check_int(i, "i", 1, v1.shape[1], f"a1 {tuple(a1.shape)} has {v1.shape[1]} directions")
    j = check_int(j, "j", 1, v2.shape[1], f"a2 {tuple(a2.shape)} has {v2.shape[1]} directions")
    for name, a, k in (("a1", a1, i), ("a2", a2, j)):
        rank = int(torch.linalg.matrix_rank(_as_matrix(a, name)))  # numerical rank (numpy's tolerance)
        if k > rank:
            raise ValueError(f"{'i' if name == 'a1' else 'j'}={k} is above the numerical rank {rank} "
                             f"of {name} {tuple(_as_matrix(a, name).shape)}: its singular directions "
                             f"past {rank} are arbitrary (a zero A has none), so φ would be "
                             f"meaningless; use {'i' if name == 'a1' else 'j'} <= {rank}")
    overlap = v1[:, :i].T @ v2[:, :j]  # (i, in) @ (in, j) -> (i, j): cosines between directions
    return min(float(overlap.pow(2).sum()) / min(i, j), 1.0)  # min() only trims rounding


def subspace_similarity_grid(a1: Matrix, a2: Matrix) -> torch.Tensor:
    """All ``φ(a1, a2, i, j)`` at once: float32 ``(k1, k2)`` with entry ``[i-1, j-1] = φ(i, j)``.

    ``k = min(r, in_features)``, i.e. ``(r1, r2)`` for LoRA's ``r <= in_features``. This is the
    data of the paper's Figures 3 and 4. One SVD per matrix: ``||U1_i^T U2_j||_F²`` is the sum of
    the top-left ``i x j`` block of the squared cosines, a 2-D cumulative sum.
    """
    v1, v2 = _right_singular_bases(a1, a2)
    cos2 = (v1.T @ v2) ** 2  # (k1, in) @ (in, k2) -> (k1, k2): squared cosines
    energy = cos2.cumsum(0).cumsum(1)  # (k1, k2): [i-1, j-1] = ||U1_i^T U2_j||_F²
    i = torch.arange(1, v1.shape[1] + 1, dtype=torch.float64)[:, None]  # (k1, 1)
    j = torch.arange(1, v2.shape[1] + 1, dtype=torch.float64)[None, :]  # (1, k2)
    return (energy / torch.minimum(i, j)).clamp(0, 1).float()  # clamp only trims rounding


def projection_norm(w: Matrix, u: Matrix, v: Matrix) -> float:
    """``||U^T W V^T||_F``: how much of ``w`` ``(m, n)`` lies in the given directions.

    ``u`` ``(m, r)`` holds output directions as columns and ``v`` ``(r, n)`` input directions as
    rows, as returned by :func:`top_singular_vectors` (the paper's notation ``U^T W V^T``, §7.3).
    With orthonormal columns/rows this is the Frobenius norm of ``w`` projected onto those
    subspaces. The paper's Table 7 compares ``U, V`` from ΔW, from W itself, and random ones.
    """
    t, tu, tv = _as_matrix(w), _as_matrix(u, "u"), _as_matrix(v, "v")
    if tu.shape[0] != t.shape[0] or tv.shape[1] != t.shape[1] or tu.shape[1] != tv.shape[0]:
        raise ValueError(f"for w of shape {tuple(t.shape)} need u (m, r) = ({t.shape[0]}, r) and "
                         f"v (r, n) = (r, {t.shape[1]}), got u {tuple(tu.shape)}, v "
                         f"{tuple(tv.shape)}; see top_singular_vectors")
    return float(torch.linalg.matrix_norm(tu.T @ t @ tv.T))  # (r, m) @ (m, n) @ (n, r) -> (r, r)


def amplification_factor(delta_w: Matrix, w: Matrix, r: int) -> float:
    """``||ΔW||_F / ||U_r^T W V_r^T||_F``, with ``U_r, V_r`` the top-r singular directions of ΔW.

    The LoRA paper (§7.3, Table 7) finds ΔW amplifies directions that W barely uses: about 21.5
    for GPT-3's ``W_q`` at r = 4. ``delta_w`` and ``w`` are ``(m, n)``; ``1 <= r <= min(m, n)``.
    Returns ``inf`` if ``w`` has no component at all in those directions.
    """
    d, t = _as_matrix(delta_w, "delta_w"), _as_matrix(w, "w")
    if d.shape != t.shape:
        raise ValueError(f"delta_w {tuple(d.shape)} and w {tuple(t.shape)} must have the same "
                         "shape (out_features, in_features)")
    r = _check_rank(r, d)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)  # (m, k), (k,), (k, n)
    if s[0] == 0:
        raise ValueError("delta_w is all zeros (e.g. LoRA's B right after initialisation), so it "
                         "has no directions to amplify; train first")
    projected = torch.linalg.matrix_norm(u[:, :r].T @ t @ vh[:r].T)  # (r, m) @ (m, n) @ (n, r)
    return math.inf if projected == 0 else float(torch.linalg.matrix_norm(d) / projected)
