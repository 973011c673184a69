"""DoRA's arithmetic: the row norms of ``W0 + s·BA`` and the layer's forward/backward pass.

DoRA (Liu et al. 2024, arXiv 2402.09353, Eq. 5) splits the adapted weight into a magnitude and a
direction::

    W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_row          m: (out,), one per output feature

``nn.Linear`` stores its weight as ``(out_features, in_features)``: row ``i`` is the weight vector
that produces output feature ``i``, so the norm is taken over each row (``dim=1``), as PEFT does.
The paper's §4.3 treats the norm as a constant in the backward pass (no gradient flows through it).

Forming ``W0 + s·BA`` (an ``(out, in)`` matrix) every step to take its row norms is what makes a
naive DoRA step slow. ``weight_norm`` gets the same norms from small products::

    ‖W0_i + s·B_i A‖² = ‖W0_i‖² + 2s·(W0 Aᵀ)_i · B_i + s²·B_i (A Aᵀ) B_iᵀ

where ``‖W0_i‖²`` is fixed while ``W0`` is frozen (the caller caches it), ``W0 Aᵀ`` is
``(out, r)`` and ``A Aᵀ`` is ``(r, r)``. ``weight_norm_reference`` is the plain formula it is
tested against.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["weight_norm", "weight_norm_reference", "DoRALinearFunction"]


def weight_norm_reference(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                          scaling: float) -> torch.Tensor:
    """``‖W0 + s·B A‖`` per output feature, by forming the matrix. Shape ``(out,)``.

    Args:
        weight: ``W0``, ``(out, in)``; lora_A: ``(r, in)``; lora_B: ``(out, r)``.
    """
    return torch.linalg.norm(weight + scaling * (lora_B @ lora_A), dim=1)  # (out, in) -> (out,)


@torch.no_grad()
def weight_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
                weight_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """The same norms as ``weight_norm_reference`` without forming the ``(out, in)`` matrix.

    Computed without gradient (DoRA §4.3 detaches the norm). Half-precision inputs are computed
    in float32 and the result is cast back.

    Args:
        weight: ``W0``, ``(out, in)``; lora_A: ``(r, in)``; lora_B: ``(out, r)``.
        weight_sq_norm: ``‖W0_i‖²`` per row, ``(out,)``, if the caller has it cached.
    Returns:
        ``(out,)``.
    """
    dtype = weight.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    w, a, b = weight.to(work), lora_A.to(work), lora_B.to(work)
    if weight_sq_norm is None:
        weight_sq_norm = w.pow(2).sum(1)  # (out,)
    cross = (w @ a.T).mul_(b).sum(1)  # ((out, in) @ (in, r)) ⊙ (out, r) -> (out,)
    quad = (b @ (a @ a.T)).mul_(b).sum(1)  # ((out, r) @ (r, r)) ⊙ (out, r) -> (out,)
    sq = weight_sq_norm.to(work) + (2 * scaling) * cross + (scaling * scaling) * quad  # (out,)
    return sq.clamp_min_(0).sqrt_().to(dtype)  # rounding can make a zero norm slightly negative


class DoRALinearFunction(torch.autograd.Function):
    """``Y = c ⊙ (X W0ᵀ + s·(X Aᵀ) Bᵀ) + b`` with ``c = m / norm``, and its backward pass by hand.

    Inputs: ``X: (n, in)``, ``W0: (out, in)``, ``b: (out,)`` or ``None``, ``A: (r, in)``,
    ``B: (out, r)``, the scaling ``s``, the magnitude ``m: (out,)`` and ``norm: (out,)``, the row
    norms of ``W0 + s·BA``, a constant (DoRA §4.3). With ``G = dL/dY`` and ``Z = X W0ᵀ + s·H Bᵀ``,
    ``H = X Aᵀ``::

        dL/dm = Σ_rows (G ⊙ Z) / norm          (out,)
        G_c   = G ⊙ c                           (n, out): from here on, LoRA's backward with G_c
        dL/dB = s · G_cᵀ H,   dL/dA = s · (G_c B)ᵀ X,   dL/dX = G_c W0 + s · (G_c B) A

    No dropout here: ``LoRALinear`` uses its autograd path when dropout is active.
    ``apply`` returns ``(Y, H, Z)``; ``H`` and ``Z`` are handed out only for the backward pass.
    """

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
                magnitude: torch.Tensor, norm: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = (lora_A @ x.T).T  # H = X A^T as ((r, in) @ (in, n))^T -> (n, r)
        z = nn.functional.linear(x, weight)  # (n, out), no bias
        torch.addmm(z, h, lora_B.T, alpha=scaling, out=z)  # Z += s · H B^T: (n, r) @ (r, out)
        c = magnitude / norm  # (out,)
        y = z * c if bias is None else torch.addcmul(bias, z, c)  # (n, out)
        return y, h, z

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        x, weight, bias, lora_A, lora_B, scaling, magnitude, norm = inputs
        _, h, z = output
        ctx.mark_non_differentiable(h, z)
        ctx.save_for_backward(x, weight, lora_A, lora_B, magnitude, norm, h, z)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_h: None, _grad_z: None) -> tuple:
        x, weight, lora_A, lora_B, magnitude, norm, h, z = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb, _, need_m, _ = ctx.needs_input_grad
        s = ctx.scaling
        grad_x = grad_w = grad_b = grad_a = grad_bb = grad_m = None
        if need_m:
            grad_m = torch.linalg.vecdot(grad, z, dim=0).div_(norm)  # Σ_n G ⊙ Z / norm: (out,)
        gc = grad * (magnitude / norm)  # G ⊙ c: (n, out)
        if need_a or need_x:
            gb = (gc @ lora_B).mul_(s)  # s · G_c B: (n, out) @ (out, r) -> (n, r)
            if need_a:
                grad_a = gb.T @ x  # (r, n) @ (n, in) -> (r, in)
            if need_x:
                grad_x = gc @ weight  # (n, out) @ (out, in) -> (n, in)
                torch.addmm(grad_x, gb, lora_A, out=grad_x)  # (n, in) += (n, r) @ (r, in)
        if need_bb:
            grad_bb = (gc.T @ h).mul_(s)  # (out, n) @ (n, r) -> (out, r)
        if need_w:
            grad_w = gc.T @ x  # (out, n) @ (n, in) -> (out, in), the norm held constant
        if need_b and ctx.has_bias:
            grad_b = grad.sum(0)  # (out,)
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, grad_m, None
