"""What does DoRA cost? A DoRA training step against a LoRA step, PEFT's DoRA step and nn.Linear.

    python benchmarks/bench_dora.py                    # d=2048, r=8, batch 256
    python benchmarks/bench_dora.py --repeats 50
    python benchmarks/bench_dora.py --threads 1 --no-input-grad   # other setups, same ratios

Every layer wraps a frozen (d, d) ``nn.Linear`` (r=8, lora_alpha=16, no dropout, A and B random,
so ΔW ≠ 0), and every step is forward + backward with an input that requires grad (unless
``--no-input-grad``). Each ratio is
measured side by side in one run (alternating, median of paired repeats, as in
``bench_lora_linear.py``):

- DoRA (``LoRALinear(..., use_dora=True)``) / PEFT's DoRA layer: the target is <= 0.6;
- DoRA / LoRA (``LoRALinear``), DoRA / the frozen base ``nn.Linear``, PEFT's DoRA / ``nn.Linear``;
- two ablations of our DoRA step, to show where the time goes: the row norms taken from the
  formed (out, in) matrix ``W0 + s·BA`` (``dora.weight_norm_reference``) instead of from small
  products, and the whole layer through autograd (``LoRALinear.forward_autograd``).

PEFT is in requirements.txt; in an environment without it the PEFT rows are skipped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from timing import make_pair, paired_median_ratio, size_arguments, train_step
from lora_helpers import LoRALinear
from lora_helpers.dora import DoRALinearFunction, weight_norm_reference


def dora_layer(lora: LoRALinear) -> LoRALinear:
    """A DoRA layer with ``lora``'s base (the same weight tensor) and the same A and B."""
    dora = LoRALinear(lora.base, r=lora.r, lora_alpha=lora.lora_alpha, use_dora=True)
    with torch.no_grad():
        dora.lora_A.copy_(lora.lora_A)
        dora.lora_B.copy_(lora.lora_B)
        dora.lora_magnitude_vector.copy_(dora.dora_weight_norm())
    return dora


def peft_dora_layer(dora: LoRALinear) -> nn.Module:
    """PEFT's DoRA layer around the same base, with the same A, B and magnitude."""
    import peft

    holder = nn.Module()
    holder.lin = dora.base
    model = peft.get_peft_model(holder, peft.LoraConfig(r=dora.r, lora_alpha=dora.lora_alpha,
                                                        target_modules=["lin"], use_dora=True))
    layer = model.base_model.model.lin  # a peft.tuners.lora.Linear whose base_layer is dora.base
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(dora.lora_A)
        layer.lora_B["default"].weight.copy_(dora.lora_B)
        layer.lora_magnitude_vector["default"].weight.copy_(dora.lora_magnitude_vector)
    return layer


def peft_lora_layer(dora: LoRALinear) -> nn.Module:
    """PEFT's plain LoRA layer around the same base, with the same A and B."""
    import peft

    holder = nn.Module()
    holder.lin = dora.base
    model = peft.get_peft_model(holder, peft.LoraConfig(r=dora.r, lora_alpha=dora.lora_alpha,
                                                        target_modules=["lin"]))
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(dora.lora_A)
        layer.lora_B["default"].weight.copy_(dora.lora_B)
    return layer


def plain_norm_step(dora: LoRALinear, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """Our DoRA step, but with the row norms of the formed (out, in) matrix (the ablation)."""
    def step() -> None:
        for p in dora.parameters():
            p.grad = None
        x.grad = None
        with torch.no_grad():
            norm = weight_norm_reference(dora.base.weight, dora.lora_A, dora.lora_B, dora.scaling)
        out, _, _ = DoRALinearFunction.apply(x, dora.base.weight, dora.base.bias, dora.lora_A,
                                             dora.lora_B, dora.scaling, dora.lora_magnitude_vector,
                                             norm)  # (batch, d)
        out.backward(grad)
    return step


def autograd_step(dora: LoRALinear, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in dora.parameters():
            p.grad = None
        x.grad = None
        dora.forward_autograd(x).backward(grad)  # (batch, d)
    return step


def main() -> None:
    parser = size_arguments(__doc__)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument("--no-input-grad", action="store_true",
                        help="the input needs no gradient, as for a network's first layer; the "
                             "nn.Linear rows are skipped (a frozen layer then has no backward pass)")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: give a positive number of threads, e.g. 1")
        torch.set_num_threads(args.threads)
    has_peft = importlib.util.find_spec("peft") is not None
    version = f", peft {__import__('peft').__version__}" if has_peft else " (peft not installed)"
    print(f"torch {torch.__version__}{version}, {torch.get_num_threads()} threads, d={args.d}, "
          f"r={args.r}, batch={args.batch}, {args.repeats} paired repeats (median), input "
          f"{'without' if args.no_input_grad else 'with'} gradient")
    x = torch.randn(args.batch, args.d, requires_grad=not args.no_input_grad)
    grad = torch.randn(args.batch, args.d)
    lora, base = make_pair(args.d, args.r)
    dora = dora_layer(lora)
    assert dora.base is base and lora.base is base  # one weight tensor for every layer

    def ratio(fn_a: Callable[[], None], fn_b: Callable[[], None]) -> float:
        return paired_median_ratio(fn_a, fn_b, args.repeats)[2]

    ours = train_step(dora, x, grad)
    rows = []
    if has_peft:
        theirs = peft_dora_layer(dora)
        torch.testing.assert_close(theirs(x), dora(x), rtol=1e-4, atol=1e-4)  # the same layer
        rows.append(("DoRA / PEFT's DoRA   (target <= 0.6)", ratio(ours, train_step(theirs, x, grad))))
    rows.append(("DoRA / LoRA", ratio(ours, train_step(lora, x, grad))))
    if not args.no_input_grad:
        rows += [
            ("DoRA / nn.Linear", ratio(ours, train_step(base, x, grad))),
            ("LoRA / nn.Linear", ratio(train_step(lora, x, grad), train_step(base, x, grad))),
        ]
    if has_peft and not args.no_input_grad:
        rows.append(("PEFT's DoRA / nn.Linear", ratio(train_step(theirs, x, grad),
                                                      train_step(base, x, grad))))
    if has_peft:
        rows.append(("PEFT's DoRA / PEFT's LoRA", ratio(
            train_step(theirs, x, grad), train_step(peft_lora_layer(dora), x, grad))))
    rows += [
        ("ablation: DoRA with norms of the formed matrix / DoRA",
         ratio(plain_norm_step(dora, x, grad), ours)),
        ("ablation: DoRA through autograd / DoRA", ratio(autograd_step(dora, x, grad), ours)),
    ]
    print("training step (forward + backward), ratio of medians:")
    for name, value in rows:
        print(f"  {name:<55} {value:7.3f}", flush=True)


if __name__ == "__main__":
    main()
