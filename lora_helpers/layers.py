"""The LoRA layer: a frozen ``nn.Linear`` plus a trainable low-rank update.

LoRA (Hu et al. 2021, arXiv 2106.09685, §4.1) keeps the pretrained weight ``W0`` of shape
``(out_features, in_features)`` frozen and learns ``ΔW = scaling · B @ A`` with
``B: (out_features, r)``, ``A: (r, in_features)`` and ``r ≪ min(in_features, out_features)``::

    h = W0 x + scaling · B A x

The layer *wraps* the base ``nn.Linear`` (it does not copy it), so ``layer.base`` is the very
module that was passed in. Merging (``merge()``) adds ``ΔW`` into ``base.weight`` explicitly; it
never happens as a side effect of ``train()`` or ``eval()``.

Two variants live here as options, as in PEFT: DoRA (``use_dora=True``; its arithmetic is in
``dora.py``) and PiSSA (``init_lora_weights="pissa"``).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from ._checks import check_int
from .dora import DoRALinearFunction, weight_norm
from .quantization import NF4Linear  # QLoRA: a frozen NF4 base is adapted like an nn.Linear

__all__ = ["LoRALinear", "LoRALinearFunction"]


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


class LoRALinear(nn.Module):
    """Wrap a frozen ``nn.Linear`` with a LoRA update ``ΔW = scaling · lora_B @ lora_A``.

    Args:
        base: the layer to adapt; its weight ``W0`` has shape ``(out_features, in_features)``.
            It is wrapped, not copied, and its parameters are frozen. An ``NF4Linear``
            (``lora_helpers.quantization``) is accepted too: QLoRA's 4-bit base, run through
            ``forward_autograd`` and never merged into.
        r: the rank of the update, ``1 <= r <= min(in_features, out_features)`` (larger only
            with ``allow_rank_above_features=True``).
        lora_alpha: the numerator of the scaling; ``scaling = lora_alpha / r`` (paper §4.1).
        lora_dropout: dropout probability applied to the input of the LoRA path only.
        use_rslora: if True, ``scaling = lora_alpha / sqrt(r)`` (rsLoRA, arXiv 2312.03732).
        init_lora_weights: ``True``: A ~ kaiming_uniform(a=sqrt(5)), i.e. U(±1/sqrt(in_features)),
            and B = 0 (loralib and PEFT default); ``"gaussian"``: A ~ N(0, std=1/r), B = 0 (as
            PEFT's "gaussian"); ``False``: A and B both random (ΔW ≠ 0; for tests, as in PEFT);
            ``"pissa"``: PiSSA (Meng et al. 2024, arXiv 2404.02948), see ``reset_lora_parameters``.
        use_dora: if True, DoRA (Liu et al. 2024, arXiv 2402.09353): a trainable magnitude
            ``lora_magnitude_vector`` of shape ``(out_features,)``, initialised to the row norms of
            ``W0 + ΔW``, and the output ``m ⊙ (W0 + ΔW) x / ‖W0 + ΔW‖_row + bias``, the norm
            detached from the gradient (the paper's §4.3). See ``lora_helpers.dora``.

        allow_rank_above_features: accept ``r > min(in_features, out_features)``, as PEFT does
            (``load_peft_adapter`` uses it for files that have such layers). Such an update still
            has rank at most ``min(in_features, out_features)``: the extra rows only cost memory.

    Mixed precision (as PEFT 0.21's default ``autocast_adapter_dtype=True``): on a float16 or
    bfloat16 base, ``lora_A``, ``lora_B`` (and DoRA's magnitude) are float32. The input, in the
    base's dtype, goes through the base as it is and is cast to float32 for the LoRA path; the sum
    is formed in float32 and cast back, so the output has the base's dtype. Under
    ``torch.autocast`` the input is cast to the adapter's dtype and autocast then chooses the
    matmul dtype, as in PEFT. Both run through ``forward_autograd``.

    Attributes:
        init_lora_weights: the initialisation last applied (``reset_lora_parameters``);
            ``save_peft_adapter`` writes it, because for PiSSA it is part of the model.
        weight, bias: read-only views of ``base.weight`` / ``base.bias`` (PEFT's layers have them
            too; T5's feed-forward reads ``wo.weight.dtype``). They are not parameters of this
            module: ``state_dict`` keys stay ``base.weight`` / ``base.bias``.

    Shapes:
        input ``(..., in_features)`` → output ``(..., out_features)``; any leading dims.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        lora_alpha: float = 8,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init_lora_weights: bool | str = True,
        use_dora: bool = False,
        *,
        allow_rank_above_features: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(base, LoRALinear):
            raise ValueError("this layer already has LoRA (base is a LoRALinear); "
                             "adapt the plain nn.Linear once, or use its .base")
        if not isinstance(base, (nn.Linear, NF4Linear)):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}; LoRALinear "
                            "wraps linear layers only (nn.Linear, or QLoRA's NF4Linear)")
        r = check_int(r, "r")
        if r > min(base.in_features, base.out_features) and not allow_rank_above_features:
            raise ValueError(
                f"r={r} exceeds min(in_features, out_features) = "
                f"min({base.in_features}, {base.out_features}); a rank-r update needs "
                f"r <= {min(base.in_features, base.out_features)} (PEFT accepts a larger r: pass "
                "allow_rank_above_features=True to do the same)")
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, numbers.Real):
            raise TypeError(f"lora_alpha must be a positive number, got {lora_alpha!r}")
        if not lora_alpha > 0:  # also catches NaN
            raise ValueError(f"lora_alpha must be > 0, got {lora_alpha}; "
                             "a common choice is lora_alpha = r (scaling 1)")
        if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, numbers.Real):
            raise TypeError(f"lora_dropout must be a float in [0, 1), got {lora_dropout!r}")
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}; "
                             "use 0.0 for no dropout")
        if init_lora_weights is not True and init_lora_weights is not False \
                and init_lora_weights not in ("gaussian", "pissa"):
            raise ValueError(f"init_lora_weights must be True, False, 'gaussian' or 'pissa', "
                             f"got {init_lora_weights!r}")
        if not isinstance(use_dora, bool):
            raise TypeError(f"use_dora must be True or False, got {use_dora!r}")
        if isinstance(base, NF4Linear) and (use_dora or init_lora_weights == "pissa"):
            what = "use_dora=True" if use_dora else "init_lora_weights='pissa'"
            raise ValueError(f"{what} needs the full-precision weight, but the base is an "
                             "NF4Linear (4-bit). For QPiSSA, initialise PiSSA on the nn.Linear "
                             "first and quantize its residual base.weight afterwards (notebook 08); "
                             "for DoRA, adapt a full-precision base")

        self.base = base
        self.base.requires_grad_(False)  # W0 (and bias) stay frozen
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        factory = ({"device": base.device, "dtype": base.dtype} if isinstance(base, NF4Linear)
                   else {"device": base.weight.device, "dtype": base.weight.dtype})
        if factory["dtype"] in (torch.float16, torch.bfloat16):  # PEFT: fp32 adapters on a half base
            factory["dtype"] = torch.float32
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))   # (r, in)
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))  # (out, r)
        self.merged = False
        self.disabled = False  # set by lora_helpers.disable_lora
        self.use_dora = use_dora
        if use_dora:  # DoRA's magnitude m: (out,), set by reset_lora_parameters
            self.lora_magnitude_vector = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("lora_magnitude_vector", None)
        self._w0_sq_norm: tuple[torch.Tensor, int, torch.Tensor] | None = None  # DoRA's cache
        self.init_lora_weights: bool | str | None = None  # set by reset_lora_parameters
        self.reset_lora_parameters(init_lora_weights)

    @property
    def weight(self) -> torch.Tensor:
        """``base.weight``, ``(out_features, in_features)`` (read-only; PEFT's layers have it)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """``base.bias``, ``(out_features,)`` or None (read-only)."""
        return self.base.bias

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the base computes in, which inputs must have (outside autocast)."""
        return self.base.dtype if isinstance(self.base, NF4Linear) else self.base.weight.dtype

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: bool | str = True) -> None:
        """(Re)initialise A and B (and DoRA's magnitude) as described in the class docstring.

        Sampling happens in float32 and is then cast, so fp16/bf16 layers get the same
        distribution as fp32 ones.

        ``"pissa"`` (as PEFT): with the SVD ``W0 = U S Vᵀ`` (computed in float32, or float64 for
        a float64 layer), ``A = diag(√(S_r/s)) V_rᵀ`` and ``B = U_r diag(√(S_r/s))``, so that
        ``s·BA = U_r S_r V_rᵀ``, the best rank-r approximation of ``W0`` (Eckart–Young), and
        ``base.weight`` becomes the residual ``W0 - s·BA``: the output is unchanged. This
        changes ``base.weight`` in place (the layer wraps its base, it does not copy it).

        With DoRA, the magnitude is then set to the row norms of ``W0 + s·BA``.

        A PiSSA layer cannot be re-initialised: its ``base.weight`` holds the residual, and new A
        and B would change the output (the original ``W0`` is residual + the *initial* ``s·BA``,
        which training has moved). Re-initialise a fresh layer built on the original weight.
        """
        if self.merged:
            raise ValueError("cannot re-initialise a merged layer (its update is inside "
                             "base.weight); call unmerge() first")
        if getattr(self, "init_lora_weights", None) == "pissa":
            raise ValueError(f"cannot re-initialise a PiSSA layer with init_lora_weights="
                             f"{init_lora_weights!r}: its base.weight is the residual W0 - s·BA, "
                             "so new A and B would silently change the output. Build a new "
                             "LoRALinear on a layer holding the original W0")
        if init_lora_weights == "pissa":
            self._pissa_init()
        else:
            self._random_init(init_lora_weights)
        self.init_lora_weights = init_lora_weights
        if self.use_dora:
            norm = self.dora_weight_norm()  # (out,)
            if not (norm > 0).all():
                rows = (norm <= 0).nonzero().flatten().tolist()[:10]
                raise ValueError(f"DoRA needs a nonzero norm for every output feature, but rows "
                                 f"{rows} of W0 + ΔW are zero (m / ‖W0 + ΔW‖ would be 0/0); "
                                 "use plain LoRA (use_dora=False) for this layer")
            self.lora_magnitude_vector.copy_(norm)

    def _random_init(self, init_lora_weights: bool | str) -> None:
        a = torch.empty(self.lora_A.shape, device=self.lora_A.device)  # (r, in), float32
        b = torch.zeros(self.lora_B.shape, device=self.lora_B.device)  # (out, r), float32
        if init_lora_weights == "gaussian":
            nn.init.normal_(a, std=1.0 / self.r)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # U(±1/sqrt(in_features))
        if init_lora_weights is False:
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))  # U(±1/sqrt(r)): ΔW ≠ 0
        self.lora_A.copy_(a)
        self.lora_B.copy_(b)

    def _pissa_init(self) -> None:
        weight = self.base.weight  # (out, in)
        if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"PiSSA needs a floating-point weight, got {weight.dtype}; "
                            "initialise in float32 and quantize the residual afterwards")
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        w = weight.to(work)  # (out, in)
        u, s_vals, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        tol = max(w.shape) * torch.finfo(work).eps * s_vals[0]
        rank = int((s_vals > tol).sum())
        if rank < self.r:
            raise ValueError(
                f"PiSSA with r={self.r} needs a weight of rank >= {self.r}, but W0 has numerical "
                f"rank {rank}: the missing directions would put zero rows in both A and B, which "
                f"never train; use r <= {rank} or another init_lora_weights")
        sr = s_vals[:self.r] / self.scaling  # (r,): s·BA must equal U_r S_r V_r^T
        lora_A = torch.diag(torch.sqrt(sr)) @ vh[:self.r]  # (r, r) @ (r, in) -> (r, in)
        lora_B = u[:, :self.r] @ torch.diag(torch.sqrt(sr))  # (out, r) @ (r, r) -> (out, r)
        self.lora_A.copy_(lora_A)
        self.lora_B.copy_(lora_B)
        weight.copy_(w - self.scaling * lora_B @ lora_A)  # residual W0 - s·BA: (out, in)

    def dora_weight_norm(self) -> torch.Tensor:
        """DoRA's ``‖W0 + s·B A‖`` per output feature, ``(out_features,)``, without gradient.

        Computed from small products (``lora_helpers.dora.weight_norm``), with ``‖W0_i‖²``
        cached until ``base.weight`` changes (a new tensor or an in-place update). Only for an
        unmerged layer: merged, ``base.weight`` is not ``W0``.
        """
        weight = self.base.weight  # (out, in)
        cache = self._w0_sq_norm
        if cache is None or cache[0] is not weight or cache[1] != weight._version:
            with torch.no_grad():
                sq = weight.to(torch.promote_types(weight.dtype, torch.float32)).pow(2).sum(1)
            cache = self._w0_sq_norm = (weight, weight._version, sq)  # (out,)
        return weight_norm(weight, self.lora_A, self.lora_B, self.scaling, cache[2])

    def delta_weight(self) -> torch.Tensor:
        """Return ``ΔW``, shape ``(out_features, in_features)``: what ``merge()`` adds to W0.

        LoRA: ``scaling · B @ A``. DoRA: ``m / ‖W0 + s·BA‖_row ⊙ (W0 + s·BA) - W0``, which
        depends on ``W0`` (while merged, on the ``W0`` that ``unmerge()`` would restore).
        """
        lora = (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)
        if not self.use_dora:
            return lora
        w0 = self.base.weight  # (out, in)
        if self.merged:
            w0 = w0 / self._dora_factor[:, None] - lora  # undo the merge: W0 = W'/c - s·BA
        adapted = w0 + lora  # (out, in)
        norm = torch.linalg.norm(adapted, dim=1).detach()  # (out,)
        return (self.lora_magnitude_vector / norm)[:, None] * adapted - w0  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling · (dropout(x) @ A^T) @ B^T``; never forms ``B @ A``.

        Unmerged, this runs ``LoRALinearFunction``: the same formula with a hand-written backward
        pass, which is faster than autograd's (``benchmarks/bench_lora_linear.py``). If ``base``
        has forward hooks or a subclass ``forward``, the plain-autograd ``forward_autograd`` runs
        instead, so that they are honoured. Merged or disabled, the output is just ``base(x)``.

        Args:
            x: ``(..., in_features)``.
        Returns:
            ``(..., out_features)``.
        """
        base = self.base
        hooked = bool(base._forward_hooks or base._forward_pre_hooks)
        if self.merged or self.disabled or hooked or type(base).forward is not nn.Linear.forward:
            return self.forward_autograd(x)
        if self.lora_A.dtype != base.weight.dtype or torch.is_autocast_enabled(x.device.type):
            return self.forward_autograd(x)  # mixed precision: PEFT's casts, by autograd
        if self.use_dora and self.training and isinstance(self.lora_dropout, nn.Dropout):
            return self.forward_autograd(x)  # DoRA with active dropout: PEFT's formula, by autograd
        self._check_input(x)
        # 2-D inputs go in as they are: a reshape would be a view, and a leaf input would have to
        # copy its gradient, a measurable cost in the benchmark.
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (n, in)
        dropped = self.lora_dropout(x2d)  # (n, in); the same tensor object when there is no dropout
        if self.use_dora:  # no dropout here (see above)
            out, _, _ = DoRALinearFunction.apply(  # (n, out)
                x2d, base.weight, base.bias, self.lora_A, self.lora_B, self.scaling,
                self.lora_magnitude_vector, self.dora_weight_norm())
        else:
            out, _ = LoRALinearFunction.apply(  # (n, out), and H: (n, r)
                x2d, None if dropped is x2d else dropped, base.weight, base.bias,
                self.lora_A, self.lora_B, self.scaling)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)  # (..., out)

    def forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """The same output as ``forward``, from ordinary ops whose backward autograd derives.

        It is the reference that the hand-written backward is tested against.

        Args:
            x: ``(..., in_features)``.
        Returns:
            ``(..., out_features)``.
        """
        self._check_input(x)
        result = self.base(x)  # (..., out)
        if self.merged or self.disabled:
            return result
        if x.dtype != self.lora_A.dtype or result.dtype != self.lora_A.dtype:
            return self._forward_mixed(x, result)
        dropped = self.lora_dropout(x)  # (..., in)
        if self.use_dora:
            # PEFT's form: base(x) + (c - 1) ⊙ W0 x_d + c ⊙ s·B A x_d, with c = m / ‖W0 + s·BA‖
            # (norm detached). Without dropout (x_d = x) it is c ⊙ (W0 + s·BA) x + bias.
            c = self.lora_magnitude_vector / self.dora_weight_norm()  # (out,)
            lora = (dropped @ self.lora_A.T) @ self.lora_B.T  # (..., r) -> (..., out)
            base_d = nn.functional.linear(dropped, self.base.weight)  # (..., out), no bias
            return result + (c - 1) * base_d + (c * self.scaling) * lora  # (..., out)
        h = dropped @ self.lora_A.T  # (..., in) @ (in, r) -> (..., r)
        # result + scaling · h @ B^T in one fused call, on 2-D views: (n, out) + (n, r) @ (r, out)
        out = torch.addmm(result.reshape(-1, self.out_features), h.reshape(-1, self.r),
                          self.lora_B.T, alpha=self.scaling)  # (n, out)
        return out.view(result.shape)  # (..., out)

    def _forward_mixed(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """PEFT's mixed-precision forward: ``x`` cast to the adapter's dtype for the LoRA path,
        ``result + lora`` formed in the wider dtype, cast back to the base output's dtype.

        Args:
            x: ``(..., in_features)``; result: ``base(x)``, ``(..., out_features)``.
        """
        dropped = self.lora_dropout(x.to(self.lora_A.dtype))  # (..., in)
        lora = (dropped @ self.lora_A.T) @ self.lora_B.T  # (..., r) -> (..., out)
        if self.use_dora:  # as in forward_autograd, with W0 x_d in the adapter's dtype
            c = self.lora_magnitude_vector / self.dora_weight_norm().to(self.lora_A.dtype)
            base_d = nn.functional.linear(dropped, self.base.weight.to(dropped.dtype))  # (..., out)
            return (result + (c - 1) * base_d + (c * self.scaling) * lora).to(result.dtype)
        return (result + self.scaling * lora).to(result.dtype)  # (..., out)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"expected input of shape (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")
        if x.dtype != self.compute_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input dtype {x.dtype} differs from the layer's "
                            f"{self.compute_dtype}; cast with x.to({self.compute_dtype})")

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``ΔW`` into ``base.weight`` so that ``forward`` is just ``base(x)``.

        Merging twice warns and changes nothing (as PEFT). A non-finite ``ΔW`` (NaN/inf) is
        refused with a ``ValueError`` and ``base.weight`` is left untouched. DoRA: the weight
        becomes ``c ⊙ (W0 + s·BA)`` with ``c = m / ‖W0 + s·BA‖_row``, and ``c`` is kept so that
        ``unmerge()`` can divide it out again.
        """
        if self.merged:
            warnings.warn("LoRALinear is already merged; nothing to do", stacklevel=2)
            return
        if isinstance(self.base, NF4Linear):  # see lora_helpers.quantization's docstring
            raise ValueError("refusing to merge into an NF4Linear base: W + ΔW is not "
                             "representable in NF4 and re-quantizing would add rounding error to "
                             "the update. Keep the adapter unmerged (QLoRA's way), or call "
                             "lora_helpers.dequantize_model(model) first and merge exactly")
        delta = self.delta_weight()  # (out, in)
        if not torch.isfinite(delta).all():
            raise ValueError("refusing to merge: the LoRA update contains NaN or inf "
                             "(check the learning rate / training); base.weight is untouched")
        if self.use_dora:
            lora = (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
            adapted = self.base.weight + lora  # W0 + s·BA: (out, in)
            self._dora_factor = self.lora_magnitude_vector / torch.linalg.norm(adapted, dim=1)
            self.base.weight.copy_(self._dora_factor[:, None] * adapted)  # (out, 1) ⊙ (out, in)
        elif delta.dtype != self.base.weight.dtype:  # fp32 adapter, half base: add in fp32
            self.base.weight.copy_(self.base.weight.to(delta.dtype) + delta)
        else:
            self.base.weight += delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``ΔW`` from ``base.weight`` again. Unmerging an unmerged layer warns."""
        if not self.merged:
            warnings.warn("LoRALinear is not merged; nothing to unmerge", stacklevel=2)
            return
        if self.use_dora:  # W0 = W' / c - s·BA, with the c of merge()
            lora = (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
            self.base.weight.copy_(self.base.weight / self._dora_factor[:, None] - lora)
        else:
            delta = self.delta_weight()  # (out, in)
            if delta.dtype != self.base.weight.dtype:  # fp32 adapter, half base
                self.base.weight.copy_(self.base.weight.to(delta.dtype) - delta)
            else:
                self.base.weight -= delta
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, scaling={self.scaling:g}, merged={self.merged}"
                + (", use_dora=True" if self.use_dora else ""))
