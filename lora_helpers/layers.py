"""The LoRA layer: a frozen linear layer plus a trainable low-rank update.

LoRA (Hu et al. 2021, arXiv 2106.09685, §4.1) keeps the pretrained weight ``W0`` of shape
``(out_features, in_features)`` frozen and learns ``ΔW = scaling · B @ A`` with
``B: (out_features, r)``, ``A: (r, in_features)`` and ``r ≪ min(in_features, out_features)``::

    h = W0 x + scaling · B A x

The layer *wraps* its base (it does not copy it), so ``layer.base`` is the very module that was
passed in. Merging (``merge()``) adds ``ΔW`` into ``base.weight`` explicitly; it never happens as
a side effect of ``train()`` or ``eval()``.

The base is an ``nn.Linear`` or any module that behaves like one (``in_features``,
``out_features``, a ``weight`` of shape ``(out, in)``, ``bias``, and the class attribute
``lora_base_kind = nn.Linear``): QLoRA's ``NF4Linear`` is one, and says through
``mergeable = False`` that its weight is read-only (a dequantized copy). This
module never names it, nor its variants. Those live beside it: DoRA in ``dora.py``
(``DoRALinear``, a subclass, registered in ``LoRALinear.variants`` so that
``LoRALinear(..., use_dora=True)`` builds one, as PEFT spells it), PiSSA's SVD in ``pissa.py``;
the hand-written backward pass in ``lora_function.py``. What every LoRA wrapper shares
(``weight``/``bias``, ``merge()``/``unmerge()``) is in ``lora_layer.LoRALayer``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_lora_arguments
from .lora_function import LoRALinearFunction
from .lora_layer import LoRALayer
from .pissa import pissa_factors

__all__ = ["LoRALinear", "LoRALinearFunction"]


class LoRALinear(LoRALayer):
    """Wrap a frozen linear layer with a LoRA update ``ΔW = scaling · lora_B @ lora_A``.

    Args:
        base: the layer to adapt (``nn.Linear``, or QLoRA's ``NF4Linear``); its weight ``W0``
            has shape ``(out_features, in_features)``. Wrapped, not copied; frozen.
        r: the rank of the update, ``1 <= r <= min(in_features, out_features)`` (larger only
            with ``allow_rank_above_features=True``, as PEFT allows).
        lora_alpha: a finite number > 0; ``scaling = lora_alpha / r`` (paper §4.1).
        lora_dropout: dropout probability applied to the input of the LoRA path only.
        use_rslora: ``True``/``False``; if True, ``scaling = lora_alpha / sqrt(r)`` (rsLoRA).
        init_lora_weights: ``True``: A ~ U(±1/sqrt(in_features)) (kaiming_uniform, a=sqrt(5)),
            B = 0 (loralib and PEFT); ``"gaussian"``: A ~ N(0, 1/r²), B = 0; ``False``: A and B
            both random (ΔW ≠ 0; for tests); ``"pissa"``: see ``lora_helpers.pissa``.
        use_dora: build the DoRA subclass instead (``lora_helpers.dora.DoRALinear``, found in
            ``LoRALinear.variants``; PEFT's spelling).

    Mixed precision (as PEFT): on a float16/bfloat16 base, A and B are float32; the LoRA path
    runs in float32 and the sum is cast back to the base's dtype (``forward_autograd``).

    Attributes:
        merged: whether ``ΔW`` is inside ``base.weight``. A merged layer's state dict carries
            ``lora_merged`` (absent while unmerged, so the keys are the usual ones), and loading
            it (with ``base.weight``) makes the layer merged: ΔW is never added twice.
        init_lora_weights: the initialisation last applied (``save_peft_adapter`` writes it).
        weight, bias: read-only views of ``base.weight`` / ``base.bias`` (as in PEFT).

    ``merge()`` (``W0 ← W0 + ΔW``, explicit, refusing NaN/inf) and ``unmerge()`` come from
    ``LoRALayer``, shared with the other LoRA layers; this class defines what ``ΔW`` is.

    Shapes: input ``(..., in_features)`` → output ``(..., out_features)``.
    """

    use_dora = False
    variants: dict[str, type[LoRALinear]] = {}
    """PEFT's flag → the subclass it builds; ``lora_helpers.dora`` adds ``"use_dora"``."""

    def __new__(cls, *args, **kwargs):
        use_dora = kwargs.get("use_dora", args[6] if len(args) > 6 else False)  # by keyword or position
        if use_dora is True and cls is LoRALinear:
            cls = LoRALinear.variants["use_dora"]  # DoRALinear (registered by lora_helpers.dora)
        return super().__new__(cls)

    def __init__(self, base: nn.Linear, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True,
                 use_dora: bool = False, *, allow_rank_above_features: bool = False) -> None:
        super().__init__()
        r = check_lora_arguments(base, r, lora_alpha, lora_dropout, use_rslora, init_lora_weights,
                                 use_dora, allow_rank_above_features)
        self.base = base.requires_grad_(False)  # W0 (and bias) stay frozen
        self.in_features, self.out_features, self.r = base.in_features, base.out_features, r
        self.lora_alpha, self.use_rslora = lora_alpha, use_rslora
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_dropout_p = float(lora_dropout)
        dtype = self.compute_dtype
        factory = {"device": getattr(base, "device", None) or base.weight.device,
                   "dtype": torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))   # (r, in)
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))  # (out, r)
        self._init_variant(factory)
        self.init_lora_weights: bool | str | None = None  # set by reset_lora_parameters
        self.reset_lora_parameters(init_lora_weights)

    def _init_variant(self, factory: dict) -> None:
        """Where a variant adds its own tensors (DoRA: the magnitude). Plain LoRA has none."""
        self.register_parameter("lora_magnitude_vector", None)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the base computes in, which inputs must have (outside autocast)."""
        dtype = getattr(self.base, "dtype", None)  # NF4Linear has it; nn.Linear does not
        return dtype if isinstance(dtype, torch.dtype) else self.base.weight.dtype

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: bool | str = True) -> None:
        """(Re)initialise A and B as described in the class docstring (sampled in float32).

        ``"pissa"`` writes the residual ``W0 - s·BA`` into ``base.weight`` in place. A PiSSA
        layer cannot be re-initialised: its base holds the residual, and new A and B would
        change the output; build a fresh layer on the original weight.
        """
        self._check_not_merged()
        if self.init_lora_weights == "pissa":
            raise ValueError(f"cannot re-initialise a PiSSA layer with init_lora_weights="
                             f"{init_lora_weights!r}: its base.weight is the residual W0 - s·BA, "
                             "so new A and B would silently change the output. Build a new "
                             "LoRALinear on a layer holding the original W0")
        if init_lora_weights == "pissa":
            lora_A, lora_B, residual = pissa_factors(self.base.weight, self.r, self.scaling)
            self.base.weight.copy_(residual)  # (out, in)
        else:
            lora_A = torch.empty(self.lora_A.shape, device=self.lora_A.device)  # (r, in), float32
            lora_B = torch.zeros(self.lora_B.shape, device=self.lora_B.device)  # (out, r), float32
            if init_lora_weights == "gaussian":
                nn.init.normal_(lora_A, std=1.0 / self.r)
            else:
                nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))  # U(±1/sqrt(in_features))
            if init_lora_weights is False:
                nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5))  # U(±1/sqrt(r)): ΔW ≠ 0
        self.lora_A.copy_(lora_A)
        self.lora_B.copy_(lora_B)
        self.init_lora_weights = init_lora_weights

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = scaling · B @ A``, shape ``(out_features, in_features)``: what ``merge()`` adds."""
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling · (dropout(x) @ A^T) @ B^T``; never forms ``B @ A``.

        On a plain ``nn.Linear`` base in the adapter's dtype, this runs ``LoRALinearFunction``:
        through autograd while gradients are recorded (its backward pass is hand-written), and
        as a plain function call under ``torch.no_grad()`` (the same numbers, without autograd's
        per-call bookkeeping: generation). Anything else (hooks or a subclassed ``forward`` on
        the base, mixed precision, autocast, merged or disabled) runs ``forward_autograd``.

        Args:
            x: ``(..., in_features)``.
        Returns:
            ``(..., out_features)``.
        """
        if not self._fast_path_ok(x):
            return self.forward_autograd(x)
        base = self.base
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (n, in)
        dropped = self.lora_dropout(x2d) if self.lora_dropout_p > 0 else None  # (n, in) or None
        args = (x2d, None if dropped is x2d else dropped, base.weight, base.bias, self.lora_A,
                self.lora_B, self.scaling)
        if torch.is_grad_enabled():
            out = LoRALinearFunction.apply(*args)[0]  # (n, out), hand-written backward
        else:
            out = LoRALinearFunction.forward(*args)[0]  # the same numbers, no autograd: (n, out)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)  # (..., out)

    def _fast_path_ok(self, x: torch.Tensor) -> bool:
        """Whether ``forward`` may run the hand-written function (see ``forward``) on ``x``."""
        base = self.base
        return not (self.merged or self.disabled or type(base).forward is not nn.Linear.forward
                    or base._forward_hooks or base._forward_pre_hooks
                    or not x.dtype == self.lora_A.dtype == base.weight.dtype
                    or torch.is_autocast_enabled(x.device.type)
                    or x.shape[-1:] != (self.in_features,))

    def forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """The same output as ``forward`` from ordinary ops (autograd derives the backward).

        The reference the hand-written backward is tested against; also the mixed-precision
        path (PEFT's: the LoRA path in the adapter's dtype, the sum cast to the base's).
        Args: ``x: (..., in_features)``. Returns: ``(..., out_features)``.
        """
        self._check_input(x)
        result = self.base(x)  # (..., out)
        if self.merged or self.disabled:
            return result
        dtype = self.lora_A.dtype
        dropped = self.lora_dropout(x if x.dtype == dtype else x.to(dtype))  # (..., in)
        return self._add_update(result, dropped).to(result.dtype)

    def _add_update(self, result: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """``result + s · (x_d Aᵀ) Bᵀ``: result ``(..., out)``, x_d ``(..., in)``."""
        h = dropped @ self.lora_A.T  # (..., in) @ (in, r) -> (..., r)
        if result.dtype != h.dtype:  # a half base: add in the adapter's (wider) dtype
            return result + self.scaling * (h @ self.lora_B.T)  # (..., out)
        out = torch.addmm(result.reshape(-1, self.out_features), h.reshape(-1, self.r),
                          self.lora_B.T, alpha=self.scaling)  # (n, out) + (n, r) @ (r, out)
        return out.view(result.shape)  # (..., out)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        if x.dtype != self.compute_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input dtype {x.dtype} differs from the layer's "
                            f"{self.compute_dtype}; cast with x.to({self.compute_dtype})")

    def _merged_state(self) -> dict[str, torch.Tensor]:
        """What a merged layer adds to its state dict (DoRA adds its factor); nothing unmerged."""
        return {"lora_merged": torch.ones((), dtype=torch.bool)} if self.merged else {}

    def _merged_state_keys(self) -> tuple[str, ...]:
        return ("lora_merged",)

    def _load_merged_state(self, extra: dict[str, torch.Tensor]) -> None:
        """A merged layer's state dict loads as merged (so ΔW is never added twice)."""
        self.merged = bool(extra.get("lora_merged", False))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, scaling={self.scaling:g}, merged={self.merged}"
                + (", use_dora=True" if self.use_dora else ""))
