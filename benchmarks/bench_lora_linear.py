"""How much does LoRA cost? Side-by-side timings of LoRALinear against a plain nn.Linear.

    python benchmarks/bench_lora_linear.py            # d=2048, r=8, batch 256 + sweep over r
    python benchmarks/bench_lora_linear.py --repeats 50

(a) training step: unmerged LoRALinear forward+backward vs its frozen base nn.Linear
    forward+backward (the input requires grad in both, so both run the backward matmul for dL/dx);
    beside it, the same layer with autograd's backward (LoRALinear.forward_autograd), to show
    what the hand-written backward of LoRALinearFunction buys;
(b) inference: merged LoRALinear forward vs the same nn.Linear's forward (paper §4.1: no added
    latency);
(c) layout: H = X A^T computed directly, as an (n, r) result, vs computed as (A X^T)^T, an
    (r, n) result seen transposed, which LoRALinearFunction uses; the same numbers.

The two sides are timed alternately inside one loop and the ratio of their medians is printed,
so machine noise hits both alike. Ratios, not absolute times, are the result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timing import inference, make_pair, paired_median_ratio, size_arguments, train_step

from lora_helpers import LoRALinear


def autograd_train_step(lora: LoRALinear, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """The same layer and formula, with the backward pass autograd derives instead of the hand-written one."""
    def step() -> None:
        for p in lora.parameters():
            p.grad = None
        x.grad = None
        lora.forward_autograd(x).backward(grad)  # (batch, d) -> (batch, d)
    return step


def layout_ratio(d: int, r: int, batch: int, repeats: int) -> float:
    """Time for ``X @ A.T`` / time for ``(A @ X.T).T``: two layouts of the same (n, r) product."""
    x, a = torch.randn(batch, d), torch.randn(r, d)  # X: (n, d), A: (r, d)
    return paired_median_ratio(lambda: x @ a.T, lambda: (a @ x.T).T, repeats)[2]  # (n, r) both


def main() -> None:
    parser = size_arguments(__doc__)
    parser.add_argument("--sweep", type=int, nargs="*", default=[1, 4, 16, 64, 256])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={args.d}, "
          f"batch={args.batch}, {args.repeats} paired repeats (median)")

    x = torch.randn(args.batch, args.d, requires_grad=True)
    grad = torch.randn(args.batch, args.d)
    print(f"{'r':>5} {'(a) train LoRA/Linear':>22} {'with autograd backward':>23} "
          f"{'(b) merged fwd/Linear':>22}")
    for r in [args.r] + [r for r in args.sweep if r != args.r]:
        lora, plain = make_pair(args.d, r)
        _, _, ratio_a = paired_median_ratio(train_step(lora, x, grad), train_step(plain, x, grad),
                                            args.repeats)
        _, _, ratio_autograd = paired_median_ratio(autograd_train_step(lora, x, grad),
                                                   train_step(plain, x, grad), args.repeats)
        lora.merge()
        _, _, ratio_b = paired_median_ratio(inference(lora, x), inference(plain, x), args.repeats)
        target = "   targets: (a) <= 1.08, (b) <= 1.02" if r == args.r else ""
        print(f"{r:>5} {ratio_a:>22.3f} {ratio_autograd:>23.3f} {ratio_b:>22.3f}{target}", flush=True)

    print("\n(c) H = X A^T: time computed directly / time computed as (A X^T)^T")
    for r in [args.r] + [r for r in args.sweep if r != args.r]:
        print(f"{r:>5} {layout_ratio(args.d, r, args.batch, 4 * args.repeats):22.2f}")


if __name__ == "__main__":
    main()
