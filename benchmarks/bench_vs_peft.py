"""LoRALinear against PEFT's LoRA layer, side by side, in one run (optional: needs ``peft``).

PEFT is not a dependency of this project. To run this comparison, install it next to the
project's requirements, e.g. in a separate virtual environment:

    pip install -r requirements.txt peft
    python benchmarks/bench_vs_peft.py

Both adapters wrap the same frozen ``nn.Linear`` (d=2048, r=8, lora_alpha=16, no dropout, batch
256). Each training step (forward + backward, the input requires grad) is timed against the
base layer's own step, alternating, and the ratio of medians is printed, as in
``bench_lora_linear.py``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from timing import make_pair, paired_median_ratio, size_arguments, train_step

try:
    import peft
except ImportError:
    sys.exit("this comparison needs PEFT, which is not a dependency of the project: "
             "pip install peft (see the docstring)")


def peft_layer(base: nn.Linear, r: int) -> nn.Module:
    """PEFT's LoRA layer around ``base``, built through PEFT's public API (``get_peft_model``)."""
    holder = nn.Module()
    holder.lin = base
    model = peft.get_peft_model(holder, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["lin"]))
    return model.base_model.model.lin  # a peft.tuners.lora.Linear whose base_layer is ``base``


def main() -> None:
    args = size_arguments(__doc__).parse_args()
    print(f"torch {torch.__version__}, peft {peft.__version__}, {torch.get_num_threads()} threads, "
          f"d={args.d}, r={args.r}, batch={args.batch}, {args.repeats} paired repeats (median)")
    x = torch.randn(args.batch, args.d, requires_grad=True)
    grad = torch.randn(args.batch, args.d)

    ours, base = make_pair(args.d, args.r)
    _, _, ratio_ours = paired_median_ratio(train_step(ours, x, grad), train_step(base, x, grad),
                                           args.repeats)
    theirs = peft_layer(make_pair(args.d, args.r)[1], args.r)
    assert theirs.base_layer.weight.requires_grad is False
    _, _, ratio_peft = paired_median_ratio(train_step(theirs, x, grad),
                                           train_step(theirs.base_layer, x, grad), args.repeats)
    _, _, ours_vs_peft = paired_median_ratio(train_step(ours, x, grad), train_step(theirs, x, grad),
                                             args.repeats)
    print(f"training step / base nn.Linear:  LoRALinear {ratio_ours:.3f}   PEFT {ratio_peft:.3f}")
    print(f"training step, LoRALinear / PEFT: {ours_vs_peft:.3f}")


if __name__ == "__main__":
    main()
