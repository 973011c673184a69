"""Inference with LoRA: the base model, unmerged LoRA (LoRALinear's no-grad path), merged LoRA.

    python benchmarks/bench_inference.py                  # notebook 07's setting
    python benchmarks/bench_inference.py --tokens 64 --rounds 20

The model is notebook 07's kind: a ``CharGPT`` (d_model 64, 4 layers, context 64) with LoRA
(r = 8) on q_proj, k_proj, v_proj, out_proj, fc1 and fc2, B random so the update is not zero.
Each variant generates ``--tokens`` tokens greedily from a 4-token prompt under
``torch.no_grad()``, one token per forward call (batch 1): at this width a layer's products take
microseconds, so what each call does besides them shows. Beside LoRALinear, ``bare`` is LoRA
reduced to its arithmetic, ``base(x) + s·(x Aᵀ) Bᵀ`` (notebook 07's ``BareLoRA``): the floor
for unmerged inference. ``merged`` is ``merge_and_unload``: plain ``nn.Linear`` layers holding
``W0 + ΔW``, what one deploys. The variants are timed in interleaved rounds and the fastest round of
each is kept (CPU time); speeds are printed relative to the base model.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import lora_helpers as L

TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


class BareLoRA(nn.Module):
    """Unmerged LoRA reduced to its arithmetic: ``base(x) + s · (x Aᵀ) Bᵀ``."""

    def __init__(self, layer: L.LoRALinear) -> None:
        super().__init__()
        self.base, self.scaling = layer.base, layer.scaling
        self.A, self.B = layer.lora_A.detach(), layer.lora_B.detach()  # (r, in), (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T


def build(d_model: int, r: int) -> dict[str, nn.Module]:
    """The four models, sharing one trained-looking adapter."""
    torch.manual_seed(0)
    base = L.CharGPT(vocab_size=96, context=64, d_model=d_model, n_heads=4, n_layers=4).eval()
    unmerged = L.apply_lora(copy.deepcopy(base), TARGETS, r=r, lora_alpha=2 * r,
                            init_lora_weights=False).eval()
    bare = copy.deepcopy(unmerged)
    for name, layer in L.lora_layers(bare):
        parent, _, child = name.rpartition(".")
        setattr(bare.get_submodule(parent), child, BareLoRA(layer))
    merged = L.merge_and_unload(copy.deepcopy(unmerged))  # plain nn.Linear layers: deployment
    return {"base": base, "unmerged (LoRALinear)": unmerged, "unmerged (bare arithmetic)": bare,
            "merged": merged}


def fastest_seconds(models: dict[str, nn.Module], tokens: int, rounds: int) -> dict[str, float]:
    """CPU seconds of the fastest of ``rounds`` interleaved generations, per model."""
    prompt = torch.tensor([[1, 2, 3, 4]])  # (1, 4)
    seconds = {name: [] for name in models}
    with torch.no_grad():
        for name, model in models.items():  # warm-up
            L.generate(model, prompt, 4, greedy=True)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.process_time()
                L.generate(model, prompt, tokens, greedy=True)
                seconds[name].append(time.process_time() - start)
    return {name: min(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=64, help="d_model")
    parser.add_argument("--r", type=int, default=8, help="the LoRA rank")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build(args.d, args.r)
    with torch.no_grad():
        x = torch.randint(0, 96, (2, 16))
        same = all(torch.allclose(m(x), models["unmerged (LoRALinear)"](x), atol=1e-4)
                   for m in models.values() if m is not models["base"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d_model={args.d}, "
          f"r={args.r}, {args.tokens} tokens x {args.rounds} rounds (fastest round, CPU time); "
          f"unmerged, bare and merged logits agree: {same}")
    fastest = fastest_seconds(models, args.tokens, args.rounds)
    for name, seconds in fastest.items():
        print(f"  {name:<28}{args.tokens / seconds:9.0f} tokens/s   "
              f"{fastest['base'] / seconds:.2f}x the base")


if __name__ == "__main__":
    main()
