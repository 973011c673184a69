"""LoRA inside fused projections: one weight for q, k, v, with only some of them adapted.

**Fused linear layers** (GPT-2's ``c_attn``, many vision transformers' ``qkv``): one weight
``W0: (3d, d)`` computes ``[q; k; v] = W0 x``. The paper adapts Wq and Wv only (§4.2, §7.1), each
with its own rank-r update. Two designs exist:

- loralib's ``MergedLinear(enable_lora=[True, False, True])`` (the code behind the paper's GPT-2
  results): a rank-r pair ``(A_i, B_i)`` per enabled slice, so ``ΔW`` is ``[s·B_q A_q; 0; s·B_v A_v]``
  — exactly what separate ``q_proj``/``v_proj`` layers with ``LoRALinear`` would learn.
- PEFT: targets the whole fused module with one pair, ``A: (r, d)``, ``B: (3d, r)``, so ``ΔW`` is
  one rank-r matrix spread over q, k and v; it cannot leave k alone.

``LoRAFusedLinear`` follows loralib: it is the only one of the two that reproduces the paper's
"Wq and Wv" setting inside a fused weight, and it is testably equal to separate projections. Its
adapters therefore have no PEFT file format (``save_peft_adapter`` refuses them). For a
GPT-2 ``Conv1D`` (weight stored ``(in, out)``) pass ``fan_in_fan_out=True``, PEFT's flag name.

**nn.MultiheadAttention** never calls ``out_proj(x)`` and keeps q, k, v in one parameter
``in_proj_weight: (3E, E)``, so wrapping a child module does nothing (notebook 03's trap).
``LoRAMultiheadAttention`` does what PEFT's ``lora.layer.MultiheadAttention`` does — one rank-r
pair on the whole ``in_proj_weight`` and one on ``out_proj.weight`` — but instead of PEFT's
delete-and-re-register of merged parameters around each call, it runs the module's own forward
with the weights ``W0 + ΔW`` substituted (``torch.func.functional_call``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from ._checks import check_int
from ._lora_args import check_lora_args, dropout_module
from .inject import LORA_WRAPPERS, plain_lora_builder
from .lora_layer import LoRALayer

__all__ = ["LoRAFusedLinear", "LoRAMultiheadAttention"]


class LoRAFusedLinear(LoRALayer):
    """A fused projection with a separate rank-r LoRA on each enabled output slice.

    Args:
        base: an ``nn.Linear`` (weight ``(out, in)``) or, with ``fan_in_fan_out=True``, a layer
            whose ``weight`` is ``(in, out)`` and computes ``x @ weight + bias`` (GPT-2 ``Conv1D``).
        split_sizes: the sizes of the output slices, summing to ``out`` (e.g. ``(d, d, d)``).
        enable_lora: one bool per slice (e.g. ``(True, False, True)`` for q and v).
        r, lora_alpha, lora_dropout, use_rslora, init_lora_weights: as ``LoRALinear``; each
            enabled slice gets ``A_i: (r, in)``, ``B_i: (out_i, r)``.

    Parameters (loralib's stacked layout): ``lora_A: (k·r, in)`` and ``lora_B: (Σ out_i, r)``
    over the k enabled slices, in order.

    Shapes: ``(..., in)`` → ``(..., out)``.
    """

    lora_parameter_names = ("lora_A", "lora_B")

    def __init__(self, base: nn.Module, split_sizes: Sequence[int], enable_lora: Sequence[bool],
                 r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool = True,
                 fan_in_fan_out: bool = False) -> None:
        super().__init__()
        if isinstance(base, nn.Linear) and fan_in_fan_out:
            raise ValueError("nn.Linear stores its weight (out, in): use fan_in_fan_out=False "
                             "(True is for GPT-2's Conv1D, whose weight is (in, out))")
        if not isinstance(base, nn.Linear) and not fan_in_fan_out:
            raise TypeError(f"base must be an nn.Linear, or a (in, out)-weight layer such as "
                            f"GPT-2's Conv1D with fan_in_fan_out=True; got {type(base).__name__}")
        w = base.weight
        if w.dim() != 2:
            raise ValueError(f"base.weight must be 2-D, got shape {tuple(w.shape)}")
        self.fan_in_fan_out = fan_in_fan_out
        self.out_features, self.in_features = (w.shape[1], w.shape[0]) if fan_in_fan_out else w.shape
        sizes = [check_int(s, "split size") for s in split_sizes]
        if sum(sizes) != self.out_features:
            raise ValueError(f"split_sizes {sizes} sum to {sum(sizes)}, but the layer has "
                             f"{self.out_features} outputs")
        enable = list(enable_lora)
        if len(enable) != len(sizes) or not all(isinstance(e, bool) for e in enable) or not any(enable):
            raise ValueError(f"enable_lora must be one bool per slice ({len(sizes)}) with at least "
                             f"one True, got {enable_lora!r}")
        smallest = min(s for s, e in zip(sizes, enable) if e)
        self.r, self.scaling = check_lora_args(r, lora_alpha, lora_dropout, use_rslora,
                                               init_lora_weights, min(self.in_features, smallest),
                                               "min(in_features, smallest enabled slice)")
        self.split_sizes, self.enable_lora = tuple(sizes), tuple(enable)
        self.base = base
        self.base.requires_grad_(False)
        self.lora_alpha, self.use_rslora = lora_alpha, use_rslora
        self.lora_dropout = dropout_module(lora_dropout)
        k = sum(enable)
        factory = {"device": w.device, "dtype": w.dtype}
        self.lora_A = nn.Parameter(torch.empty(k * self.r, self.in_features, **factory))  # (k·r, in)
        self.lora_B = nn.Parameter(torch.empty(sum(s for s, e in zip(sizes, enable) if e), self.r,
                                               **factory))  # (Σ enabled out_i, r)
        with torch.no_grad():
            for i in range(k):  # each A_i like LoRALinear's A: U(±1/sqrt(in))
                nn.init.kaiming_uniform_(self.lora_A[i * self.r:(i + 1) * self.r], a=math.sqrt(5))
            if init_lora_weights:
                nn.init.zeros_(self.lora_B)
            else:
                nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def _pairs(self):
        """Yield ``(slice of the output, A_i (r, in), B_i (out_i, r))`` for each enabled slice."""
        start = a_row = b_row = 0
        for size, on in zip(self.split_sizes, self.enable_lora):
            if on:
                yield (slice(start, start + size), self.lora_A[a_row:a_row + self.r],
                       self.lora_B[b_row:b_row + size])
                a_row, b_row = a_row + self.r, b_row + size
            start += size

    def delta_weight(self) -> torch.Tensor:
        """``ΔW``, ``(out, in)``: ``s·B_i A_i`` in each enabled slice's rows, zeros elsewhere."""
        delta = self.lora_A.new_zeros(self.out_features, self.in_features)  # (out, in)
        for rows, a, b in self._pairs():
            delta[rows] = (b @ a) * self.scaling  # (out_i, r) @ (r, in)
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)`` plus, in each enabled slice, ``s · (dropout(x) A_iᵀ) B_iᵀ``.

        Args:
            x: ``(..., in)``.
        Returns:
            ``(..., out)``.
        """
        result = self.base(x)  # (..., out)
        if self.merged or self.disabled:
            return result
        h = self.lora_dropout(x) @ self.lora_A.T  # (..., in) @ (in, k·r) -> (..., k·r)
        pairs, pieces, j = self._pairs(), [], 0
        for size, on in zip(self.split_sizes, self.enable_lora):
            if on:
                _, _, b = next(pairs)  # B_i: (out_i, r)
                pieces.append(h[..., j * self.r:(j + 1) * self.r] @ b.T * self.scaling)  # (..., out_i)
                j += 1
            else:
                pieces.append(result.new_zeros(*result.shape[:-1], size))  # (..., out_i)
        return result + torch.cat(pieces, dim=-1)  # (..., out)

    def merge_targets(self) -> tuple[torch.Tensor]:
        """``base.weight``, seen as ``(out, in)`` (its transpose for ``fan_in_fan_out``)."""
        return (self.base.weight.T if self.fan_in_fan_out else self.base.weight,)

    def peft_problem(self) -> str | None:
        return ("a fused-projection LoRA layer (loralib's enable_lora), which PEFT's format does "
                "not hold the same way: save it with lora_state_dict(model)")

    def extra_repr(self) -> str:
        return (f"split_sizes={self.split_sizes}, enable_lora={self.enable_lora}, r={self.r}, "
                f"scaling={self.scaling:g}, merged={self.merged}")


class LoRAMultiheadAttention(LoRALayer):
    """LoRA on an ``nn.MultiheadAttention``: its fused ``in_proj_weight`` and its ``out_proj``.

    As PEFT's ``lora.layer.MultiheadAttention``: ``lora_A: (r, E)``, ``lora_B: (3E, r)`` update the
    whole ``in_proj_weight: (3E, E)`` (q, k and v rows together), and ``out_proj_lora_A: (r, E)``,
    ``out_proj_lora_B: (E, r)`` update ``out_proj.weight: (E, E)``; A ~ U(±1/√E), B = 0. Only
    ``_qkv_same_embed_dim`` modules (kdim = vdim = embed_dim), as PEFT.

    Why ``out_proj`` cannot be adapted on its own (PEFT's reason): ``nn.MultiheadAttention.forward``
    reads ``out_proj.weight`` directly and never calls ``out_proj(x)``, so a LoRA wrapped around
    ``out_proj`` would be silently ignored; ``apply_lora`` refuses that target. Here both updates
    are added to the weights the module's own forward reads.

    Args: as ``LoRALinear``; ``lora_dropout`` must be 0 (the update is applied to the weights,
    as PEFT's merge-then-forward does, so there is no input to drop).
    Call it exactly like the base: ``(query, key, value, ...)`` → ``(attn_output, weights)``.
    """

    lora_parameter_names = ("lora_A", "lora_B", "out_proj_lora_A", "out_proj_lora_B")

    def __init__(self, base: nn.MultiheadAttention, r: int = 8, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, use_rslora: bool = False,
                 init_lora_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(base, nn.MultiheadAttention):
            raise TypeError(f"base must be an nn.MultiheadAttention, got {type(base).__name__}")
        if not base._qkv_same_embed_dim:
            raise ValueError("only attention with kdim = vdim = embed_dim (one fused "
                             "in_proj_weight) is supported, as in PEFT")
        if lora_dropout != 0.0:
            raise ValueError("lora_dropout must be 0.0: the update is added to the weights "
                             "(as PEFT does for nn.MultiheadAttention), so no input is dropped")
        e = base.embed_dim
        self.r, self.scaling = check_lora_args(r, lora_alpha, 0.0, use_rslora, init_lora_weights,
                                               e, "embed_dim")
        self.base = base
        self.base.requires_grad_(False)
        self.embed_dim, self.lora_alpha, self.use_rslora = e, lora_alpha, use_rslora
        factory = {"device": base.in_proj_weight.device, "dtype": base.in_proj_weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.r, e, **factory))  # (r, E)
        self.lora_B = nn.Parameter(torch.empty(3 * e, self.r, **factory))  # (3E, r)
        self.out_proj_lora_A = nn.Parameter(torch.empty(self.r, e, **factory))  # (r, E)
        self.out_proj_lora_B = nn.Parameter(torch.empty(e, self.r, **factory))  # (E, r)
        with torch.no_grad():
            for a, b in ((self.lora_A, self.lora_B), (self.out_proj_lora_A, self.out_proj_lora_B)):
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                if init_lora_weights:
                    nn.init.zeros_(b)
                else:
                    nn.init.kaiming_uniform_(b, a=math.sqrt(5))

    def delta_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ΔW_in: (3E, E), ΔW_out: (E, E))``, each ``scaling · B A``."""
        return ((self.lora_B @ self.lora_A) * self.scaling,  # (3E, r) @ (r, E)
                (self.out_proj_lora_B @ self.out_proj_lora_A) * self.scaling)  # (E, r) @ (r, E)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs):
        """The base's forward with ``in_proj_weight + ΔW_in`` and ``out_proj.weight + ΔW_out``."""
        if self.merged or self.disabled:
            return self.base(query, key, value, **kwargs)
        d_in, d_out = self.delta_weights()
        weights = {"in_proj_weight": self.base.in_proj_weight + d_in,  # (3E, E)
                   "out_proj.weight": self.base.out_proj.weight + d_out}  # (E, E)
        return functional_call(self.base, weights, (query, key, value), kwargs)

    def merge_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(in_proj_weight, out_proj.weight)``, where ``delta_weights()`` are added."""
        return (self.base.in_proj_weight, self.base.out_proj.weight)

    def peft_problem(self) -> str | None:
        return ("an nn.MultiheadAttention LoRA layer, which this package's PEFT writer does not "
                "hold yet: save it with lora_state_dict(model)")

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


LORA_WRAPPERS[nn.MultiheadAttention] = plain_lora_builder(LoRAMultiheadAttention,
                                                          "nn.MultiheadAttention")
