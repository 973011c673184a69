"""Timing helpers shared by the benchmark scripts (they import this module, not each other).

``paired_median_ratio`` times two callables alternately and compares their medians, so machine
noise hits both alike; ``make_pair``, ``train_step`` and ``inference`` build what is timed;
``size_arguments`` is the command line every script shares.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lora_helpers import LoRALinear


def paired_median_ratio(fn_a: Callable[[], None], fn_b: Callable[[], None], repeats: int,
                        warmup: int = 20) -> tuple[float, float, float]:
    """Time ``fn_a`` and ``fn_b`` alternately; return (median_a s, median_b s, median_a / median_b)."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for i in range(repeats):
        order = (fn_a, fn_b) if i % 2 == 0 else (fn_b, fn_a)  # alternate who goes first
        for fn in order:
            start = time.perf_counter()
            fn()
            (times_a if fn is fn_a else times_b).append(time.perf_counter() - start)
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    return med_a, med_b, med_a / med_b


def make_pair(d: int, r: int) -> tuple[LoRALinear, nn.Linear]:
    """A LoRA layer and, as the baseline, its own frozen base ``nn.Linear``.

    Comparing against the very same weight tensor matters: two different (d, d) weight tensors
    timed alternately differed by up to 3% on these machines (memory placement), which is as
    large as the effect being measured.
    """
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(d, d), r=r, lora_alpha=2 * r, init_lora_weights=False)
    return lora, lora.base


def train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        layer(x).backward(grad)  # (batch, d) -> (batch, d); grads for x (and A, B)
    return step


def inference(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            layer(x)
    return forward


def size_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options both benchmark scripts share: sizes and repeats."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=2048, help="in_features = out_features")
    parser.add_argument("--r", type=int, default=8, help="the LoRA rank")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=100, help="paired repeats per ratio")
    return parser
