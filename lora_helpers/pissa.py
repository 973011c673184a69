"""PiSSA's initialisation (Meng et al. 2024, arXiv 2404.02948): A and B from the top-r SVD of W0.

With the SVD ``W0 = U S Vᵀ``, ``A = diag(√(S_r/s)) V_rᵀ`` and ``B = U_r diag(√(S_r/s))``, so that
``s·BA = U_r S_r V_rᵀ``, the best rank-r approximation of ``W0`` (Eckart–Young), and the base
weight becomes the residual ``W0 - s·BA``: the layer's output is unchanged. The paper names its
A and B the other way round from LoRA; the names here are LoRA's (and PEFT's).
"""

from __future__ import annotations

import torch

__all__ = ["pissa_factors"]


@torch.no_grad()
def pissa_factors(weight: torch.Tensor, r: int, scaling: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, residual)`` for PiSSA: ``A: (r, in)``, ``B: (out, r)``, ``residual: (out, in)``.

    Computed in float32 (float64 for a float64 weight); the caller copies them into its tensors.

    Args:
        weight: ``W0``, ``(out, in)``, floating point.
        r: the rank; ``W0`` must have numerical rank ``>= r``.
        scaling: the layer's ``s``; ``s·B A`` is the top-r part of ``W0``.
    Raises:
        TypeError: ``weight`` is not floating point.
        ValueError: ``W0``'s numerical rank is below ``r`` (zero rows in A and B never train).
    """
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"PiSSA needs a floating-point weight, got {weight.dtype}; "
                        "initialise in float32 and quantize the residual afterwards")
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.to(work)  # (out, in)
    u, s_vals, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
    tol = max(w.shape) * torch.finfo(work).eps * s_vals[0]
    rank = int((s_vals > tol).sum())
    if rank < r:
        raise ValueError(
            f"PiSSA with r={r} needs a weight of rank >= {r}, but W0 has numerical rank {rank}: "
            f"the missing directions would put zero rows in both A and B, which never train; "
            f"use r <= {rank} or another init_lora_weights")
    root = torch.sqrt(s_vals[:r] / scaling)  # (r,): s·BA must equal U_r S_r V_r^T
    lora_A = root[:, None] * vh[:r]  # diag(√(S_r/s)) V_r^T: (r, 1) ⊙ (r, in) -> (r, in)
    lora_B = u[:, :r] * root  # U_r diag(√(S_r/s)): (out, r) ⊙ (r,) -> (out, r)
    residual = w - scaling * lora_B @ lora_A  # W0 - s·BA: (out, in)
    return lora_A, lora_B, residual
