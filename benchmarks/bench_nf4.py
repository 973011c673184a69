"""What does dequantizing on the fly cost? NF4Linear against nn.Linear, side by side, in one run.

    python benchmarks/bench_nf4.py                 # d=2048, r=8, batch 256
    python benchmarks/bench_nf4.py --repeats 50

QLoRA (arXiv 2305.14314) stores the frozen weight in 4 bits and dequantizes it for every matrix
product. On a GPU, bitsandbytes fuses that into its kernels; here ``NF4Linear`` does it in plain
PyTorch on the CPU, so each call pays for rebuilding the (d, d) float32 weight. Timed, each
against the full-precision layer holding the original weight:

(a) inference: ``NF4Linear`` forward / ``nn.Linear`` forward (no grad), without and with double
    quantization;
(b) the dequantization alone (``dequantized_weight()``) / ``nn.Linear`` forward: the part of (a)
    that is rebuilding the weight;
(c) a QLoRA training step: ``LoRALinear`` on the ``NF4Linear`` base, forward + backward (the input
    requires grad) / ``LoRALinear`` on the ``nn.Linear`` base, same r, same A and B.

Both sides of each ratio are timed alternately inside one loop (``paired_median_ratio``), and the
ratio of their medians is printed, so machine noise hits both alike. Ratios, not absolute times,
are the result. Memory is printed too: exact bytes of the stored weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from timing import inference, paired_median_ratio, size_arguments, train_step
from lora_helpers import LoRALinear, NF4Linear


def dequantize_only(layer: NF4Linear) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            layer.dequantized_weight()  # (d, d)
    return run


def lora_pair(linear: nn.Linear, quantized: NF4Linear, r: int) -> tuple[LoRALinear, LoRALinear]:
    """LoRA on the NF4 base and on the full-precision base, with the same (non-zero) A and B."""
    torch.manual_seed(0)
    on_nf4 = LoRALinear(quantized, r=r, lora_alpha=2 * r, init_lora_weights=False)
    on_linear = LoRALinear(linear, r=r, lora_alpha=2 * r)
    with torch.no_grad():
        on_linear.lora_A.copy_(on_nf4.lora_A)
        on_linear.lora_B.copy_(on_nf4.lora_B)
    return on_nf4, on_linear


def main() -> None:
    args = size_arguments(__doc__).parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={args.d}, r={args.r}, "
          f"batch={args.batch}, {args.repeats} paired repeats (median)")
    torch.manual_seed(0)
    linear = nn.Linear(args.d, args.d).requires_grad_(False)
    nf4 = NF4Linear.from_linear(linear)
    nf4_dq = NF4Linear.from_linear(linear, double_quant=True)
    weight_bytes = linear.weight.numel() * linear.weight.element_size()
    print(f"stored weight: nn.Linear fp32 {weight_bytes:,} B   NF4 {nf4.quantized_weight.nbytes:,} B "
          f"({nf4.quantized_weight.bits_per_parameter:.4f} bits/param)   NF4+DQ "
          f"{nf4_dq.quantized_weight.nbytes:,} B ({nf4_dq.quantized_weight.bits_per_parameter:.4f})")

    x = torch.randn(args.batch, args.d)
    _, _, fwd = paired_median_ratio(inference(nf4, x), inference(linear, x), args.repeats)
    _, _, fwd_dq = paired_median_ratio(inference(nf4_dq, x), inference(linear, x), args.repeats)
    _, _, deq = paired_median_ratio(dequantize_only(nf4), inference(linear, x), args.repeats)
    print(f"(a) forward, NF4Linear / nn.Linear:          {fwd:.3f}")
    print(f"    forward, NF4Linear (double quant) / nn.Linear: {fwd_dq:.3f}")
    print(f"(b) dequantize alone / nn.Linear forward:    {deq:.3f}")

    x_grad = torch.randn(args.batch, args.d, requires_grad=True)
    grad = torch.randn(args.batch, args.d)
    on_nf4, on_linear = lora_pair(linear, nf4, args.r)
    _, _, step = paired_median_ratio(train_step(on_nf4, x_grad, grad),
                                     train_step(on_linear, x_grad, grad), args.repeats)
    print(f"(c) training step, LoRA on NF4 / LoRA on nn.Linear (r={args.r}): {step:.3f}")


if __name__ == "__main__":
    main()
