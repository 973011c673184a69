"""A small character language model (a GPT) and sampling text from it.

``CharGPT`` is a decoder-only transformer over characters, built from the causal
``TransformerBlock`` of :mod:`lora_helpers.models`, with GPT-2's layout and Hugging Face's module
names (so ``target_modules=["q_proj", "v_proj"]`` means what it means in PEFT). ``generate``
extends a prompt token by token (temperature, top-k or greedy), reading at most the model's
context, as nanoGPT does; ``generate_text`` does the same on strings through a tokenizer.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ._checks import check_int
from .models import TransformerBlock

__all__ = ["CharGPT", "generate", "generate_text"]


class CharGPT(nn.Module):
    """A small decoder-only transformer (GPT) over characters: the next-character model.

    Token ids ``(batch, T)`` are embedded by ``tok_embed`` plus a learned position embedding
    ``pos_embed`` (one vector per position ``0 .. context - 1``); ``n_layers`` causal transformer
    blocks follow (the same ``TransformerBlock`` as the classifier, with causal attention); a
    final LayerNorm ``norm`` and the language-model head ``lm_head`` give, at every position
    ``t``, logits for the character at ``t + 1``. Module names: ``blocks.{i}.attn.{q,k,v,out}_proj``,
    ``blocks.{i}.mlp.fc1``, ``blocks.{i}.mlp.fc2``, ``lm_head`` (GPT-2's layout, with
    Hugging Face's names).

    Parameters, with ``V`` = vocab_size, ``C`` = context, ``d`` = d_model, ``m`` = mlp_ratio:
    ``V·d`` + ``C·d`` + ``n_layers · (4(d² + d) + 4d + 2m·d² + m·d + d)`` + ``2d`` + ``d·V + V``.
    For ``V = 96, C = 64, d = 128``, 2 layers, ``m = 4``: 12,288 + 8,192 + 2 · 198,272 + 256 +
    12,384 = 429,664.

    Args:
        vocab_size: number of token ids.
        context: the longest sequence the model reads (the number of learned positions).
        d_model, n_heads, n_layers, mlp_ratio, dropout: as in ``TransformerBlock``.

    Input: ``(batch, T)`` integer ids with ``1 <= T <= context``; output logits
    ``(batch, T, vocab_size)``.
    """

    def __init__(self, vocab_size: int, context: int = 64, d_model: int = 128, n_heads: int = 4,
                 n_layers: int = 2, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in [("vocab_size", vocab_size), ("context", context), ("d_model", d_model),
                            ("n_heads", n_heads), ("n_layers", n_layers), ("mlp_ratio", mlp_ratio)]:
            check_int(value, name)
        self.vocab_size, self.context = vocab_size, context
        self.tok_embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(context, d_model))
        with torch.no_grad():  # small embeddings, as GPT-2 (std 0.02)
            self.tok_embed.weight.normal_(0.0, 0.02)
            self.pos_embed.normal_(0.0, 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, mlp_ratio, dropout, causal=True)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            raise TypeError("expected token ids of dtype torch.long and shape (batch, T), got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)} of shape "
                            f"{tuple(getattr(idx, 'shape', ()))}; use tokenizer.encode(text)[None]")
        seq = idx.shape[1]
        if not 1 <= seq <= self.context:
            raise ValueError(f"sequence length {seq} must be between 1 and the model's context "
                             f"{self.context}; crop to the last {self.context} tokens")
        if idx.numel() and not (0 <= idx.min() and idx.max() < self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}) for vocab_size="
                             f"{self.vocab_size}, got {idx.min().item()}..{idx.max().item()}; "
                             f"encode with the tokenizer this model was built for")
        x = self.tok_embed(idx) + self.pos_embed[:seq]  # (b, T, d)
        for block in self.blocks:
            x = block(x)  # (b, T, d)
        return self.lm_head(self.norm(x))  # (b, T, vocab_size)


def _check_temperature(temperature: float, greedy: bool) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}; "
                         "for the most likely character every time pass greedy=True")
    if not isinstance(greedy, bool):
        raise TypeError(f"greedy must be True or False, got {greedy!r}")
    return float(temperature)


@torch.no_grad()
def generate(model: CharGPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             greedy: bool = False, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``idx`` by ``max_new_tokens`` sampled tokens, one at a time.

    At each step the model reads the last ``model.context`` tokens (a sliding window, so the
    output may be longer than the context), and the next token is drawn from
    ``softmax(logits / temperature)`` at the last position, restricted to the ``top_k`` most
    likely tokens if given; ``greedy=True`` takes the most likely token instead (no randomness).

    Args:
        model: a ``CharGPT`` (its train/eval mode is restored afterwards; sampling runs in eval).
        idx: the prompt, token ids ``(batch, T0)`` (``torch.long``, ``T0 >= 1``); a prompt longer
            than the context is read from its last ``model.context`` tokens (as nanoGPT crops).
        max_new_tokens: how many tokens to add (``>= 0``).
        temperature: ``> 0``; below 1 sharpens the distribution, above 1 flattens it.
        greedy: argmax instead of sampling.
        top_k: sample among the ``top_k`` most likely tokens only (``1 <= top_k <= vocab``).
        generator: seeds the sampling (``torch.Generator().manual_seed(s)``).
    Returns:
        ``(batch, T0 + max_new_tokens)``: the prompt followed by the new tokens.
    """
    if not isinstance(model, CharGPT):
        raise TypeError(f"model must be a CharGPT, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long or idx.dim() != 2:
        raise TypeError("the prompt must be token ids of dtype torch.long and shape (batch, T0), "
                        f"got {getattr(idx, 'dtype', type(idx).__name__)}; use tokenizer.encode(text)[None]")
    if idx.shape[1] < 1:
        raise ValueError("the prompt is empty: it needs at least one token, e.g. a newline")
    if idx.numel() and not (0 <= idx.min() and idx.max() < model.vocab_size):
        raise ValueError(f"prompt ids must lie in [0, {model.vocab_size}), got "
                         f"{idx.min().item()}..{idx.max().item()}")
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", low=0)
    temperature = _check_temperature(temperature, greedy)
    if top_k is not None:
        top_k = check_int(top_k, "top_k", high=model.vocab_size, why="top_k picks among the vocabulary")
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(idx[:, -model.context:])[:, -1]  # (b, vocab) at the last position
            if greedy:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (b, 1)
            else:
                logits = logits / temperature  # (b, vocab)
                if top_k is not None:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (b, 1), the k-th largest
                    logits = logits.masked_fill(logits < kth, float("-inf"))  # (b, vocab)
                nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # (b, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (b, T + 1)
    finally:
        model.train(was_training)
    return idx


def generate_text(model: CharGPT, tokenizer, prompt: str, max_new_tokens: int, **kwargs) -> str:
    """``generate`` on a string: encode ``prompt`` with ``tokenizer`` (e.g. a ``CharTokenizer``),
    extend it, and return the prompt and the new characters as one string.

    A prompt character outside the vocabulary raises the tokenizer's ``ValueError``; the other
    arguments (``temperature``, ``greedy``, ``top_k``, ``generator``) are ``generate``'s.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if getattr(tokenizer, "vocab_size", None) != model.vocab_size:
        raise ValueError(f"the tokenizer's vocab_size ({getattr(tokenizer, 'vocab_size', None)}) "
                         f"differs from the model's ({model.vocab_size}); use the tokenizer the "
                         "model was trained with")
    ids = generate(model, tokenizer.encode(prompt)[None], max_new_tokens, **kwargs)  # (1, T0 + n)
    return tokenizer.decode(ids[0])
