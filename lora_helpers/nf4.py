"""4-bit NormalFloat (NF4): QLoRA's data type, blockwise absmax and double quantization.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314, §3) stores the frozen pretrained weights in 4 bits
and trains LoRA adapters in full precision on top. Three ideas, each written out here:

- **NF4 levels.** 16 values in [−1, 1] placed at quantiles of the standard normal distribution,
  because pretrained weights are roughly normal: each level then stands for about the same share
  of the weights. The paper estimates the negative and positive halves separately (8 levels for
  the positive side, 7 for the negative, one exact zero shared) and normalises them into [−1, 1].
  ``nf4_levels()`` derives them with torch's normal quantile function ``torch.special.ndtri``;
  the tests check them against the table bitsandbytes publishes.
- **Blockwise absmax.** The weight is cut into blocks of ``block_size`` (64) consecutive elements;
  each block is divided by its largest absolute value (its *absmax*, one fp32 constant per
  block), and every element is replaced by the index of its nearest level: 4 bits, two per byte.
- **Double quantization** (optional). The fp32 absmax constants (32/64 = 0.5 bit per weight)
  are themselves stored in 8 bits, in groups of 256, with one fp32 constant per group:
  8/64 + 32/(64·256) ≈ 0.127 bit per weight, a saving of about 0.373 bit (the paper's numbers),
  plus one fp32 constant per tensor.

Differences from bitsandbytes, on purpose: the 8-bit code for the absmax constants. QLoRA and
bitsandbytes subtract the constants' mean and quantize the rest with a signed 8-bit code scaled
by each group's largest magnitude (bitsandbytes' "dynamic" float code; a linear grid behaves
alike). A block whose absmax is far below its neighbours' then sits near ``−mean``, where steps
are a sizeable fraction of the mean: such a block's absmax is reconstructed with an error as
large as itself (a relative weight error of 0.785 measured against 0.094 without double
quantization). Here the code is logarithmic (``_absmax_log8``): ``absmax ≈ 2^(top − k·step)``
with one fp32 ``top`` per group (the log2 of its largest constant) and one fp32 ``step`` per
tensor, so every block's absmax has the same small *relative* error, ≤ ``2^(step/2) − 1``
(about 0.2% for normally distributed weights). The byte count is the paper's. Codes are packed
first element in the high nibble, as in bitsandbytes.

``NF4Linear`` (``lora_helpers.quantization``) holds such a weight in a layer.
"""

from __future__ import annotations

import math
import torch
from ._checks import check_int

__all__ = ["nf4_levels", "NF4_LEVELS", "NF4Tensor", "quantize_nf4"]


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels, derived from normal quantiles; float32 ``(16,)``, sorted, in [−1, 1].

    The positive half takes the normal quantiles at 8 equally spaced probabilities from ``p_max``
    down to (not including) 0.5, the negative half the negated quantiles at 7 such probabilities,
    and 0 is added once: 8 + 7 + 1 = 16 levels, with an exact zero (QLoRA §3). Dividing by the
    largest quantile puts both ends at exactly −1 and 1.

    ``p_max`` keeps the outermost quantile finite: it is the mean of 1 − 1/(2·15) and
    1 − 1/(2·16) (the centre of the top bin for 15 and for 16 levels), 0.96770833…, the value in
    bitsandbytes' ``create_normal_map(offset=0.9677083)``. Computed in float64, then rounded.
    """
    p_max = ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16))) / 2
    probs_pos = torch.linspace(p_max, 0.5, 9, dtype=torch.float64)[:-1]  # (8,), 0.5 excluded
    probs_neg = torch.linspace(p_max, 0.5, 8, dtype=torch.float64)[:-1]  # (7,)
    positive = torch.special.ndtri(probs_pos)  # Φ⁻¹(p): (8,)
    negative = -torch.special.ndtri(probs_neg)  # (7,)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).float()  # (16,): levels[0] = −1, levels[7] = 0, levels[15] = 1


NF4_LEVELS: torch.Tensor = nf4_levels()
"""The 16 NF4 levels (float32, sorted): code ``i`` stands for ``NF4_LEVELS[i] · absmax``."""

_BYTES = torch.arange(256)
_LEVEL_PAIRS = torch.stack([NF4_LEVELS[_BYTES >> 4], NF4_LEVELS[_BYTES & 0x0F]], dim=1)  # (256, 2)


def _check_float_tensor(weight: object, what: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(weight).__name__}; "
                        "pass e.g. layer.weight")
    if not weight.is_floating_point():
        raise TypeError(f"{what} must be floating point to quantize, got {weight.dtype}; "
                        "convert with .float()")
    if weight.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(weight.shape)}); nothing to quantize")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{what} contains NaN or inf; NF4 can only store finite weights")
    return weight


def _absmax_log8(absmax: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit logarithmic code of the absmax constants ``(n_blocks,)``, in groups of ``group``.

    Returns ``(codes, tops, step)``: int8 ``codes (n_blocks,)``, float32 ``tops (n_groups,)``, the
    log2 of each group's largest constant, and a float32 scalar ``step`` (in octaves), shared by
    the tensor: ``absmax ≈ 2 ** (top - (127 - code) · step)``; code −128 stands for an all-zero
    block. ``step`` is the widest span ``log2(max / min)`` of nonzero constants in any group,
    divided into 254 steps (at least one octave), so every nonzero constant is within half a step:
    relative error ≤ ``2 ** (step / 2) − 1``, for small and large constants alike.
    """
    n = absmax.numel()
    n_groups = math.ceil(n / group)
    padded = torch.zeros(n_groups * group, dtype=torch.float32, device=absmax.device)
    padded[:n] = absmax
    blocks = padded.view(n_groups, group)  # (n_groups, group)
    nonzero = blocks > 0
    logs = torch.where(nonzero, blocks.clamp_min(torch.finfo(torch.float32).tiny).log2(),
                       torch.full_like(blocks, math.inf))  # (n_groups, group); +inf: zero
    has = nonzero.any(dim=1)  # (n_groups,)
    tops = torch.where(has, torch.where(nonzero, logs, -math.inf).amax(dim=1), 0.0)  # (n_groups,)
    spans = (tops - logs.amin(dim=1))[has]  # octaves between each group's largest and smallest
    widest = float(spans.max()) if spans.numel() else 0.0
    step = torch.tensor(max(widest, 1.0) / 254, dtype=torch.float32)  # () at least 1/254 octave
    below = torch.round((tops[:, None] - logs) / step).clamp_(0, 254)  # steps below the top
    codes = torch.where(nonzero, 127 - below, -128.0).to(torch.int8)  # (n_groups, group)
    return codes.flatten()[:n], tops, step


def _absmax_from_log8(codes: torch.Tensor, tops: torch.Tensor, step: torch.Tensor,
                      group: int) -> torch.Tensor:
    """Invert ``_absmax_log8``: float32 ``(n_blocks,)``."""
    top = tops.repeat_interleave(group)[:codes.numel()]  # (n_blocks,)
    values = torch.exp2(top - (127 - codes.float()) * step)  # (n_blocks,)
    return torch.where(codes == -128, torch.zeros_like(values), values)


class NF4Tensor:
    """A weight stored in NF4: packed 4-bit codes, blockwise absmax constants, the shape.

    Build it with ``quantize_nf4``. Attributes (all tensors on the weight's device):

    - ``codes``: uint8 ``(ceil(numel/2),)``, two 4-bit level indices per byte, the first element
      of each pair in the high nibble;
    - without double quantization: ``absmax``: float32 ``(n_blocks,)``;
    - with it: ``absmax_codes``: int8 ``(n_blocks,)``, ``absmax_scales``: float32
      ``(ceil(n_blocks/256),)``, the log2 of each group's largest absmax, and ``absmax_offset``:
      float32 scalar, the log2 step, so that
      ``absmax ≈ 2 ** (absmax_scales[group] − (127 − absmax_codes) · absmax_offset)`` (code −128:
      an all-zero block);
    - ``shape``, ``dtype`` (the dtype ``dequantize`` returns: the original weight's),
      ``block_size``, ``double_quant``, ``double_quant_block_size``.
    """

    def __init__(self, codes: torch.Tensor, shape: torch.Size, dtype: torch.dtype, block_size: int,
                 absmax: torch.Tensor | None = None, absmax_codes: torch.Tensor | None = None,
                 absmax_scales: torch.Tensor | None = None, absmax_offset: torch.Tensor | None = None,
                 double_quant_block_size: int = 256) -> None:
        self.codes = codes
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.block_size = block_size
        self.double_quant = absmax is None
        self.double_quant_block_size = double_quant_block_size
        self.absmax = absmax
        self.absmax_codes = absmax_codes
        self.absmax_scales = absmax_scales
        self.absmax_offset = absmax_offset

    def numel(self) -> int:
        """The number of weights stored."""
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        """The number of blocks of ``block_size`` weights (one absmax constant each)."""
        return self.numel() // self.block_size

    def block_absmax(self) -> torch.Tensor:
        """The absmax constant of every block, float32 ``(n_blocks,)`` (reconstructed if double-quantized)."""
        if not self.double_quant:
            return self.absmax
        return _absmax_from_log8(self.absmax_codes, self.absmax_scales, self.absmax_offset,
                                 self.double_quant_block_size)

    def level_indices(self) -> torch.Tensor:
        """The 4-bit code of every weight, unpacked: uint8 ``(numel,)`` with values 0..15."""
        high, low = self.codes >> 4, self.codes & 0x0F  # (ceil(n/2),) each
        return torch.stack([high, low], dim=1).flatten()[:self.numel()]  # (n,)

    def dequantize(self) -> torch.Tensor:
        """The weight as NF4 represents it: ``levels[code] · absmax`` per block; shape ``self.shape``.

        Each packed byte is looked up whole in a (256, 2) table of level pairs: the same numbers
        as unpacking the two nibbles and indexing ``NF4_LEVELS``, in one gather instead of
        three passes (``benchmarks/bench_nf4.py`` measures the cost).
        """
        pairs = _LEVEL_PAIRS.to(self.codes.device)  # (256, 2): byte -> (high level, low level)
        values = pairs.index_select(0, self.codes.int()).flatten()[:self.numel()]  # (n,) in [−1, 1]
        blocks = values.view(self.n_blocks, self.block_size)  # (n_blocks, block_size)
        return blocks.mul_(self.block_absmax()[:, None]).view(self.shape).to(self.dtype)

    @property
    def nbytes(self) -> int:
        """Exact storage in bytes: packed codes + absmax constants (+ second-level constants).

        ``ceil(numel/2)`` bytes of codes; then either 4 bytes per block (fp32 absmax) or 1 byte
        per block (8-bit absmax) + 4 bytes per 256 blocks (fp32 scales) + 4 bytes (the fp32
        offset). The shape and block size are metadata, not counted.
        """
        total = self.codes.numel() * self.codes.element_size()
        if self.double_quant:
            for t in (self.absmax_codes, self.absmax_scales, self.absmax_offset):
                total += t.numel() * t.element_size()
        else:
            total += self.absmax.numel() * self.absmax.element_size()
        return total

    @property
    def bits_per_parameter(self) -> float:
        """``8 · nbytes / numel``: 4.5 for blocks of 64 with fp32 absmax."""
        return 8 * self.nbytes / self.numel()

    def __repr__(self) -> str:
        return (f"NF4Tensor(shape={tuple(self.shape)}, block_size={self.block_size}, "
                f"double_quant={self.double_quant}, nbytes={self.nbytes})")


def quantize_nf4(weight: torch.Tensor, block_size: int = 64, double_quant: bool = False,
                 double_quant_block_size: int = 256) -> NF4Tensor:
    """Quantize ``weight`` to NF4 with one absmax constant per block of ``block_size`` elements.

    Blocks are consecutive elements of the flattened weight (for an ``(out, in)`` matrix with
    ``in`` a multiple of ``block_size``: pieces of rows). In each block, ``x / absmax`` lies in
    [−1, 1] and is rounded to the nearest of the 16 ``NF4_LEVELS``; the block's largest-magnitude
    element lands exactly on −1 or 1, so it is reconstructed exactly.

    Args:
        weight: a floating-point tensor of any shape whose ``numel`` is a multiple of
            ``block_size``.
        block_size: elements per absmax block (QLoRA: 64).
        double_quant: also quantize the absmax constants to 8 bits (blocks of
            ``double_quant_block_size``, QLoRA: 256), with a logarithmic code that keeps the
            relative error of every block's absmax below ``2^(step/2) − 1`` (module docstring).
    Returns:
        an ``NF4Tensor``; ``.dequantize()`` gives back a tensor of ``weight``'s shape and dtype.
    """
    weight = _check_float_tensor(weight)
    block_size = check_int(block_size, "block_size")
    double_quant_block_size = check_int(double_quant_block_size, "double_quant_block_size")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be True or False, got {double_quant!r}")
    n = weight.numel()
    if n % block_size:
        divisors = [b for b in (16, 32, 64, 128, 256) if n % b == 0]
        raise ValueError(f"block_size={block_size} does not divide the weight's {n} elements "
                         f"(shape {tuple(weight.shape)}); choose a divisor"
                         + (f", e.g. block_size={divisors[-1]}" if divisors else ""))
    x = weight.detach().reshape(-1, block_size).float()  # (n_blocks, block_size)
    absmax = x.abs().amax(dim=1)  # (n_blocks,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block stays 0
    normalised = x / safe[:, None]  # (n_blocks, block_size) in [−1, 1]
    levels = NF4_LEVELS.to(weight.device)  # (16,)
    midpoints = (levels[1:] + levels[:-1]) / 2  # (15,): the decision boundaries
    idx = torch.bucketize(normalised, midpoints).to(torch.uint8).flatten()  # (n,) nearest level
    if n % 2:
        idx = torch.cat([idx, idx.new_zeros(1)])  # pad one nibble
    codes = (idx[0::2] << 4) | idx[1::2]  # (ceil(n/2),) two codes per byte
    common = dict(codes=codes, shape=weight.shape, dtype=weight.dtype, block_size=block_size,
                  double_quant_block_size=double_quant_block_size)
    if not double_quant:
        return NF4Tensor(absmax=absmax, **common)
    absmax_codes, tops, step = _absmax_log8(absmax, double_quant_block_size)
    return NF4Tensor(absmax_codes=absmax_codes, absmax_scales=tops, absmax_offset=step, **common)
