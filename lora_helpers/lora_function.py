"""``LoRALinearFunction``: LoRA's forward pass with its backward pass written out by hand.

``LoRALinear.forward`` runs it while training; notebook 02 derives the gradients it uses.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LoRALinearFunction"]


class LoRALinearFunction(torch.autograd.Function):
    """``Y = X W0^T + b + s · (X_d A^T) B^T``, with its backward pass written out by hand.

    Inputs: ``X: (n, in)``; ``X_d``, the input after LoRA dropout, or ``None`` for no dropout
    (then ``X_d = X``); ``W0: (out, in)``; ``b: (out,)`` or ``None``; ``A: (r, in)``;
    ``B: (out, r)``; ``s``, the scaling. With ``G = dL/dY: (n, out)`` and ``H = X_d A^T: (n, r)``::

        dL/dB  = s · G^T H            (out, r)
        dL/dA  = s · (G B)^T X_d      (r, in)
        dL/dX  = G W0 + s · (G B) A   (n, in)   (the LoRA term goes to X_d when there is dropout)
        dL/dW0 = G^T X,  dL/db = G summed over its rows   (only when the base is trainable)

    With ``G_W = G^T X`` the first two are notebook 02's ``s · G_W A^T`` and ``s · B^T G_W``,
    evaluated without forming the ``(out, in)`` matrix ``G_W``.

    Autograd, given the same formula as ordinary ops (``LoRALinear.forward_autograd``), gets the
    same numbers more slowly on a CPU, where the rank-r products are limited by memory traffic,
    not arithmetic. Two differences make this version faster:

    - the LoRA terms are added in place into ``X W0^T + b`` and into ``G W0``, instead of into new
      ``(n, features)`` tensors that are then added: two passes over memory fewer per step;
    - ``H`` is computed as ``(A X_d^T)^T``: the same numbers, in a layout that the CPU's BLAS
      computes faster for small r.

    ``benchmarks/bench_lora_linear.py`` measures both.

    ``apply`` returns ``(Y, H)``: ``H`` is handed out (as a non-differentiable output) only so
    that the backward pass can reuse it; ``LoRALinear.forward`` keeps ``Y``.

    Limits: the backward pass is not itself differentiable (``once_differentiable``), and
    ``torch.func.vmap`` is refused (its in-place ``addmm`` has no batching rule);
    ``torch.func.grad`` works. For gradients of gradients (e.g. a gradient penalty) or ``vmap``
    (e.g. per-sample gradients), use ``LoRALinear.forward_autograd``.
    """

    @staticmethod
    def forward(x: torch.Tensor, x_dropped: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor | None, lora_A: torch.Tensor, lora_B: torch.Tensor,
                scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        x_d = x if x_dropped is None else x_dropped  # (n, in)
        h = (lora_A @ x_d.T).T  # H = X_d A^T as ((r, in) @ (in, n))^T -> (n, r)
        out = nn.functional.linear(x, weight, bias)  # (n, out)
        # out += s · H @ B^T, in place. Written as addmm(out=...) rather than out.addmm_(...) so
        # that torch.utils.flop_counter.FlopCounterMode counts it (it has no rule for addmm_).
        torch.addmm(out, h, lora_B.T, alpha=scaling, out=out)  # (n, out) += (n, r) @ (r, out)
        return out, h

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, x_dropped, weight, bias, lora_A, lora_B, scaling = inputs
        _, h = output
        ctx.mark_non_differentiable(h)
        ctx.save_for_backward(x, x_dropped, weight, h, lora_A, lora_B)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_h: None) -> tuple[torch.Tensor | None, ...]:
        x, x_dropped, weight, h, lora_A, lora_B = ctx.saved_tensors
        need_x, need_xd, need_w, need_b, need_a, need_bb, _ = ctx.needs_input_grad
        s = ctx.scaling
        x_d = x if x_dropped is None else x_dropped  # (n, in)
        grad_x = grad_xd = grad_w = grad_b = grad_a = grad_bb = None
        if need_a or need_xd or (need_x and x_dropped is None):
            gb = (grad @ lora_B).mul_(s)  # s · G B: (n, out) @ (out, r) -> (n, r)
            if need_a:
                grad_a = gb.T @ x_d  # (r, n) @ (n, in) -> (r, in)
            if need_xd:
                grad_xd = gb @ lora_A  # (n, r) @ (r, in) -> (n, in)
        if need_x:
            grad_x = grad @ weight  # (n, out) @ (out, in) -> (n, in)
            if x_dropped is None:
                torch.addmm(grad_x, gb, lora_A, out=grad_x)  # (n, in) += (n, r) @ (r, in)
        if need_bb:
            grad_bb = (grad.T @ h).mul_(s)  # (out, n) @ (n, r) -> (out, r)
        if need_w:
            grad_w = grad.T @ x  # (out, n) @ (n, in) -> (out, in)
        if need_b and ctx.has_bias:
            grad_b = grad.sum(0)  # (out,)
        return grad_x, grad_xd, grad_w, grad_b, grad_a, grad_bb, None
