"""LoRA on convolutions: A is a conv with the base's kernel, B a 1×1 conv (PEFT's layout).

A ``Conv2d`` weight ``W0`` has shape ``(c_out, c_in, k_h, k_w)``. Flattened to the matrix
``(c_out, c_in·k_h·k_w)`` it is an ordinary linear map applied to every input patch, and LoRA
factors its update exactly as for ``nn.Linear``::

    lora_A: (r, c_in, k_h, k_w)   a conv with the base's kernel, stride, padding, dilation and
                                  padding mode, and r output channels: patch -> r numbers
    lora_B: (c_out, r, 1, 1)      a 1×1 conv: r numbers -> c_out channels, at every position

    y = conv(x, W0) + scaling · conv1x1(conv(dropout(x), A), B)

Because B acts on one position at a time, the two convs compose into one conv with weight
``ΔW = scaling · (B.flatten(1) @ A.flatten(1)).view(c_out, c_in, k_h, k_w)``: merging is exact.
Trainable parameters: ``r·c_in·k_h·k_w + c_out·r = r·(c_in·k² + c_out)`` for a square kernel,
instead of ``c_out·c_in·k²``. The rank is at most ``min(c_out, c_in·k²)``.

Same as PEFT (``lora.layer._ConvNd``): shapes, the init (A ~ kaiming_uniform(a=√5), i.e.
U(±1/√(c_in·k²)), B = 0), parameter names (PEFT's ``lora_A.weight`` is our ``lora_A``).
Different from PEFT 0.21.2, on purpose: PEFT's A is built without the base's dilation and
padding mode, so a dilated base crashes and a ``padding_mode="reflect"`` base merges into a
different function (measured: 2.76 max difference on a 4→6-channel 3×3 conv); here A copies
both, and merging stays exact. ``save_peft_adapter`` refuses those layers (PEFT would compute
something else from the same numbers). ``groups > 1`` is refused: PEFT cannot merge it either.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._lora_args import check_lora_args, dropout_module
from .inject import LORA_WRAPPERS, plain_lora_builder
from .lora_layer import LoRALayer

__all__ = ["LoRAConv1d", "LoRAConv2d"]


class _LoRAConvNd(LoRALayer):
    """The shared body of ``LoRAConv1d`` and ``LoRAConv2d`` (see the module docstring)."""

    base_type: type[nn.Module] = nn.Module  # set by each subclass
    lora_parameter_names = ("lora_A", "lora_B")

    def __init__(self, base: nn.Module, r: int = 8, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, use_rslora: bool = False,
                 init_lora_weights: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(base, _LoRAConvNd):
            raise ValueError(f"this conv already has LoRA; adapt the plain {self.base_type.__name__} once")
        if type(base) is not self.base_type:
            raise TypeError(f"{name} wraps an nn.{self.base_type.__name__}, got {type(base).__name__}")
        if base.groups != 1:
            raise ValueError(f"the conv has groups={base.groups}: its weight is block-diagonal over "
                             "channel groups, which one (c_out, c_in·k²) low-rank update does not "
                             "respect (PEFT cannot merge it either); adapt convs with groups=1")
        c_out, c_in_k = base.weight.shape[0], base.weight[0].numel()  # c_in·k_h·k_w
        self.r, self.scaling = check_lora_args(
            r, lora_alpha, lora_dropout, use_rslora, init_lora_weights, min(c_out, c_in_k),
            f"min(c_out, c_in·k²) = min({c_out}, {c_in_k})")
        self.base = base
        self.base.requires_grad_(False)
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.lora_alpha, self.use_rslora = lora_alpha, use_rslora
        self.lora_dropout = dropout_module(lora_dropout)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        ones = (1,) * (base.weight.dim() - 2)
        self.lora_A = nn.Parameter(torch.empty(self.r, *base.weight.shape[1:], **factory))  # (r, c_in, *k)
        self.lora_B = nn.Parameter(torch.empty(c_out, self.r, *ones, **factory))  # (c_out, r, 1..)
        self.reset_lora_parameters(init_lora_weights)

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: bool = True) -> None:
        """A ~ kaiming_uniform(a=√5) = U(±1/√(c_in·k²)); B = 0 (``True``) or U(±1/√r) (``False``)."""
        self._check_not_merged()
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init_lora_weights:
            nn.init.zeros_(self.lora_B)
        else:
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = scaling · B A`` on the flattened kernels, shape ``(c_out, c_in, *kernel)``."""
        a = self.lora_A.flatten(1)  # (r, c_in·k²)
        b = self.lora_B.flatten(1)  # (c_out, r)
        return (b @ a).view(self.base.weight.shape) * self.scaling  # (c_out, c_in·k²) -> (c_out, c_in, *k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling · conv1x1(conv_A(dropout(x)), B)``; never forms ``ΔW``.

        Args:
            x: ``(batch, c_in, *spatial)`` (or unbatched ``(c_in, *spatial)``).
        Returns:
            ``(batch, c_out, *spatial_out)``, as the base.
        """
        result = self.base(x)  # (N, c_out, *out)
        if self.merged or self.disabled:
            return result
        # _conv_forward applies the base's padding mode, stride, padding and dilation to A.
        h = self.base._conv_forward(self.lora_dropout(x), self.lora_A, None)  # (N, r, *out)
        return result + self._conv_fn(h, self.lora_B) * self.scaling  # 1×1 conv: (N, c_out, *out)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.base.kernel_size}, r={self.r}, scaling={self.scaling:g}, "
                f"merged={self.merged}")

    def peft_problem(self) -> str | None:
        """PEFT 0.21.2 builds its conv ``lora_A`` without dilation or a non-zero padding mode."""
        if self.base.padding_mode != "zeros" or set(self.base.dilation) != {1}:
            return ("a conv with dilation or a padding mode other than 'zeros': PEFT 0.21.2 "
                    "builds its lora_A without them, so the same numbers would compute a "
                    "different function there")
        return None


class LoRAConv2d(_LoRAConvNd):
    """LoRA on an ``nn.Conv2d``: A ``(r, c_in, k_h, k_w)``, B ``(c_out, r, 1, 1)``.

    Args: as ``LoRALinear`` (``r``, ``lora_alpha``, ``lora_dropout``, ``use_rslora``,
    ``init_lora_weights``), ``1 <= r <= min(c_out, c_in·k_h·k_w)``.
    Shapes: ``(N, c_in, H, W)`` → ``(N, c_out, H_out, W_out)``, as the base.
    """

    base_type = nn.Conv2d
    _conv_fn = staticmethod(nn.functional.conv2d)


class LoRAConv1d(_LoRAConvNd):
    """LoRA on an ``nn.Conv1d``: A ``(r, c_in, k)``, B ``(c_out, r, 1)``.

    Shapes: ``(N, c_in, L)`` → ``(N, c_out, L_out)``, as the base.
    """

    base_type = nn.Conv1d
    _conv_fn = staticmethod(nn.functional.conv1d)


LORA_WRAPPERS[nn.Conv1d] = plain_lora_builder(LoRAConv1d, "conv")
LORA_WRAPPERS[nn.Conv2d] = plain_lora_builder(LoRAConv2d, "conv")
