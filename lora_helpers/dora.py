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

``DoRALinear`` is the layer: a ``LoRALinear`` subclass that adds the magnitude and overrides
initialisation, ``delta_weight``, the forward passes, merge and unmerge. It registers itself in
``LoRALinear.variants``, so ``LoRALinear(..., use_dora=True)`` and ``apply_lora(...,
use_dora=True)`` build it (the core does not import this module).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LoRALinear

__all__ = ["weight_norm", "weight_norm_reference", "DoRALinearFunction", "DoRALinear"]


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


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024, arXiv 2402.09353) on a frozen linear layer; a ``LoRALinear``.

    Adds a trainable magnitude ``lora_magnitude_vector``, ``(out_features,)``, initialised to the
    row norms of ``W0 + ΔW``; the output is ``m ⊙ (W0 + s·BA) x / ‖W0 + s·BA‖_row + bias``, the
    norm detached from the gradient (§4.3). Arguments as ``LoRALinear`` (``use_dora`` is
    implied). Merged, ``base.weight`` holds ``c ⊙ (W0 + s·BA)`` with ``c = m / ‖W0 + s·BA‖_row``;
    ``c`` is kept in ``lora_dora_factor``; a merged layer's state dict carries it, so a merged
    model's state dict can be unmerged after loading.

    Shapes: input ``(..., in_features)`` → output ``(..., out_features)``.
    """

    lora_parameter_names = ("lora_A", "lora_B", "lora_magnitude_vector")
    peft_tensor_names = {**LoRALinear.peft_tensor_names, "lora_magnitude_vector": "lora_magnitude_vector"}

    use_dora = True

    def __init__(self, base: nn.Linear, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True,
                 use_dora: bool = True, *, allow_rank_above_features: bool = False) -> None:
        if use_dora is not True:
            raise TypeError(f"DoRALinear is DoRA: use_dora must be True, got {use_dora!r} "
                            "(use LoRALinear for plain LoRA)")
        super().__init__(base, r, lora_alpha, lora_dropout, use_rslora, init_lora_weights,
                         use_dora, allow_rank_above_features=allow_rank_above_features)

    def _init_variant(self, factory: dict) -> None:
        self.lora_magnitude_vector = nn.Parameter(torch.empty(self.out_features, **factory))  # m
        self.lora_dora_factor = torch.ones(self.out_features, **factory)  # c, set by merge()
        self._w0_sq_norm: tuple | None = None  # (W0, its data_ptr, its _version, ‖W0_i‖²: (out,))

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: bool | str = True) -> None:
        """As ``LoRALinear``'s, then the magnitude is set to the row norms of ``W0 + s·BA``."""
        super().reset_lora_parameters(init_lora_weights)
        norm = self.dora_weight_norm()  # (out,)
        if not (norm > 0).all():
            rows = (norm <= 0).nonzero().flatten().tolist()[:10]
            raise ValueError(f"DoRA needs a nonzero norm for every output feature, but rows "
                             f"{rows} of W0 + ΔW are zero (m / ‖W0 + ΔW‖ would be 0/0); "
                             "use plain LoRA (use_dora=False) for this layer")
        self.lora_magnitude_vector.copy_(norm)

    def dora_weight_norm(self) -> torch.Tensor:
        """``‖W0 + s·B A‖`` per output feature, ``(out_features,)``, without gradient.

        From small products (``weight_norm``), with ``‖W0_i‖²`` cached while ``base.weight`` is
        the same storage at the same version: a new tensor, ``weight.data = ...`` or an in-place
        update all recompute it. Only for an unmerged layer: merged, ``base.weight`` is not W0.
        """
        weight = self.base.weight  # (out, in)
        cache = self._w0_sq_norm
        if (cache is None or cache[0] is not weight or cache[1] != weight.data_ptr()
                or cache[2] != weight._version):
            with torch.no_grad():
                sq = weight.to(torch.promote_types(weight.dtype, torch.float32)).pow(2).sum(1)
            cache = self._w0_sq_norm = (weight, weight.data_ptr(), weight._version, sq)  # (out,)
        return weight_norm(weight, self.lora_A, self.lora_B, self.scaling, cache[3])

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = m / ‖W0 + s·BA‖_row ⊙ (W0 + s·BA) - W0``, ``(out, in)``; depends on ``W0``
        (while merged, on the ``W0`` that ``unmerge()`` would restore)."""
        lora = super().delta_weight()  # s·BA: (out, in)
        w0 = self.base.weight  # (out, in)
        if self.merged:
            w0 = w0 / self.lora_dora_factor[:, None] - lora  # undo the merge: W0 = W'/c - s·BA
        adapted = w0 + lora  # (out, in)
        norm = torch.linalg.norm(adapted, dim=1).detach()  # (out,)
        return (self.lora_magnitude_vector / norm)[:, None] * adapted - w0  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As ``LoRALinear.forward``, through ``DoRALinearFunction``; with active dropout (training
        and ``lora_dropout > 0``), PEFT's formula by autograd (``forward_autograd``).

        Args: ``x: (..., in_features)``. Returns: ``(..., out_features)``.
        """
        if (self.training and self.lora_dropout_p > 0) or not self._fast_path_ok(x):
            return self.forward_autograd(x)
        base = self.base
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (n, in)
        args = (x2d, base.weight, base.bias, self.lora_A, self.lora_B, self.scaling,
                self.lora_magnitude_vector, self.dora_weight_norm())
        if torch.is_grad_enabled():
            out = DoRALinearFunction.apply(*args)[0]  # (n, out)
        else:
            out = DoRALinearFunction.forward(*args)[0]  # no autograd: (n, out)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)  # (..., out)

    def _add_update(self, result: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """PEFT's form: ``base(x) + (c - 1) ⊙ W0 x_d + c ⊙ s·B A x_d``, ``c = m / ‖W0 + s·BA‖``
        (detached). Without dropout (x_d = x) it is ``c ⊙ (W0 + s·BA) x + bias``."""
        c = self.lora_magnitude_vector / self.dora_weight_norm().to(dropped.dtype)  # (out,)
        lora = (dropped @ self.lora_A.T) @ self.lora_B.T  # (..., r) -> (..., out)
        base_d = nn.functional.linear(dropped, self.base.weight.to(dropped.dtype))  # (..., out)
        return result + (c - 1) * base_d + (c * self.scaling) * lora  # (..., out)

    def _merged_state(self) -> dict[str, torch.Tensor]:
        state = super()._merged_state()
        if self.merged:
            state["lora_dora_factor"] = self.lora_dora_factor.detach().clone()  # c: (out,)
        return state

    def _merged_state_keys(self) -> tuple[str, ...]:
        return ("lora_merged", "lora_dora_factor")

    def _load_merged_state(self, extra: dict[str, torch.Tensor]) -> None:
        if extra.get("lora_merged", False) and "lora_dora_factor" not in extra:
            raise ValueError("this merged DoRA state dict has no lora_dora_factor, which unmerge "
                             "needs; save it again from a merged DoRALinear")
        super()._load_merged_state(extra)
        if self.merged:
            with torch.no_grad():
                self.lora_dora_factor = extra["lora_dora_factor"].to(self.lora_dora_factor)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.lora_dora_factor = fn(self.lora_dora_factor)  # moves and casts with the layer
        return self

    @torch.no_grad()
    def merge(self) -> None:
        """``base.weight ← c ⊙ (W0 + s·BA)``, ``c = m / ‖W0 + s·BA‖_row`` kept for ``unmerge``.

        Refused (``ValueError``, base untouched) when ``c`` has a zero or non-finite entry: a zero
        magnitude would erase the row of ``W0`` and ``unmerge`` could not divide it out again.
        """
        if self.merged:
            return super().merge()  # warns
        self._check_can_merge()
        lora = super().delta_weight()  # s·BA: (out, in)
        adapted = self.base.weight + lora  # W0 + s·BA: (out, in)
        factor = self.lora_magnitude_vector / torch.linalg.norm(adapted, dim=1)  # c: (out,)
        bad = (~torch.isfinite(factor) | (factor == 0) | ~torch.isfinite(adapted).all(1)).nonzero()
        if len(bad):
            raise ValueError(f"refusing to merge DoRA: rows {bad.flatten().tolist()[:10]} have a "
                             "zero or non-finite factor m / ‖W0 + s·BA‖ (a zero magnitude would "
                             "erase W0's row, and unmerge could not restore it); base.weight is "
                             "untouched. Keep this layer unmerged")
        self.lora_dora_factor = factor.clone()  # (out,)
        self.base.weight.copy_(factor[:, None] * adapted)  # (out, 1) ⊙ (out, in)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 = W' / c - s·BA`` with the ``c`` of ``merge()``."""
        if not self.merged:
            return super().unmerge()  # warns
        lora = super().delta_weight()  # (out, in)
        self.base.weight.copy_(self.base.weight / self.lora_dora_factor[:, None] - lora)
        self.merged = False


LoRALinear.variants["use_dora"] = DoRALinear  # LoRALinear(..., use_dora=True) builds a DoRALinear
