"""A tiny transformer to adapt: attention with separate q/k/v/out projections.

The projections carry Hugging Face's names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``;
``fc1``, ``fc2`` in the MLP), so ``target_modules=["q_proj", "v_proj"]`` means here what it means
in PEFT. The attention math is written out (no ``nn.MultiheadAttention``, whose packed
``in_proj_weight`` hides the projections from LoRA; see notebook 03).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ._checks import check_int

__all__ = ["MultiHeadSelfAttention", "MLP", "TransformerBlock", "TinyTransformerClassifier", "CharGPT",
           "generate", "generate_text"]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention, ``softmax(Q K^T / sqrt(d_head)) V``, with four ``nn.Linear``.

    Args:
        d_model: token width; must be divisible by ``n_heads``.
        n_heads: number of heads; each has width ``d_head = d_model // n_heads``.
        dropout: dropout on the attention weights.
        causal: if True, position ``t`` attends only to positions ``<= t`` (a decoder, as in
            GPT): the scores above the diagonal are set to ``-inf`` before the softmax. The
            default (False) lets every position see every other (an encoder).

    Shapes: ``(batch, seq, d_model)`` → ``(batch, seq, d_model)``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        check_int(d_model, "d_model")
        check_int(n_heads, "n_heads")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                             "pick n_heads that divides d_model")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be True or False, got {causal!r}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.causal = causal
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = t.shape
        return t.view(batch, seq, self.n_heads, self.d_head).transpose(1, 2)  # (b, h, s, d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected (batch, seq, {self.d_model}), got {tuple(x.shape)}")
        batch, seq, _ = x.shape
        q = self._split_heads(self.q_proj(x))  # (b, h, s, d_head)
        k = self._split_heads(self.k_proj(x))  # (b, h, s, d_head)
        v = self._split_heads(self.v_proj(x))  # (b, h, s, d_head)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (b, h, s, s)
        if self.causal:  # query t may not see keys after t: -inf there, weight 0 after softmax
            future = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu_(1)  # (s, s)
            scores = scores.masked_fill(future, float("-inf"))  # (b, h, s, s)
        weights = self.dropout(scores.softmax(dim=-1))  # (b, h, s, s), rows sum to 1
        heads = weights @ v  # (b, h, s, d_head)
        merged = heads.transpose(1, 2).reshape(batch, seq, self.d_model)  # (b, s, d_model)
        return self.out_proj(merged)  # (b, s, d_model)


class MLP(nn.Module):
    """``fc2(GELU(fc1(x)))``: ``(..., d_model)`` → ``(..., hidden)`` → ``(..., d_model)``."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))  # (..., d_model)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    ``causal=True`` makes the attention causal (see ``MultiHeadSelfAttention``).

    Shapes: ``(batch, seq, d_model)`` → ``(batch, seq, d_model)``.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0,
                 causal: bool = False) -> None:
        super().__init__()
        check_int(mlp_ratio, "mlp_ratio")
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, n_heads, dropout, causal=causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio * d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (b, s, d_model)
        return x + self.mlp(self.ln2(x))  # (b, s, d_model)


class TinyTransformerClassifier(nn.Module):
    """A small vision transformer for 8×8 digit images.

    The image is cut into non-overlapping ``patch_size × patch_size`` patches (16 tokens of 4
    pixels for the defaults), each embedded by ``patch_embed`` plus a learned position embedding;
    ``n_layers`` transformer blocks follow; the tokens are mean-pooled, normalised by ``norm`` and
    classified by ``head``. Module names: ``blocks.{i}.attn.{q,k,v,out}_proj``,
    ``blocks.{i}.mlp.fc1``, ``blocks.{i}.mlp.fc2``, ``head``.

    Parameters for the defaults (d=64, 2 layers, mlp_ratio 4, 16 patches of 4 pixels):
    patch_embed 4·64+64 = 320, pos_embed 16·64 = 1,024, per block 4·(64·64+64) = 16,640 attention
    + 2·64 ·2 = 256 LayerNorm + (64·256+256) + (256·64+64) = 33,088 MLP → 49,984, norm 128,
    head 64·10+10 = 650: 102,090 in all.

    Input: ``(batch, 8, 8)``, ``(batch, 1, 8, 8)`` or flat ``(batch, 64)``; output logits
    ``(batch, n_classes)``.
    """

    def __init__(self, image_size: int = 8, patch_size: int = 2, d_model: int = 64,
                 n_heads: int = 4, n_layers: int = 2, n_classes: int = 10, mlp_ratio: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in [("image_size", image_size), ("patch_size", patch_size),
                            ("d_model", d_model), ("n_heads", n_heads), ("n_layers", n_layers),
                            ("n_classes", n_classes), ("mlp_ratio", mlp_ratio)]:
            check_int(value, name)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(patch_size * patch_size, d_model)
        self.pos_embed = nn.Parameter(torch.randn(self.n_patches, d_model) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, mlp_ratio, dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, 8, 8)`` (or ``(batch, 1, 8, 8)``, ``(batch, 64)``) → ``(batch, n_patches, p·p)``."""
        s, p = self.image_size, self.patch_size
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError("expected a floating-point image tensor, got "
                            f"{getattr(images, 'dtype', type(images).__name__)}; "
                            "convert with images.float()")
        if images.dim() == 2 and images.shape[1] == s * s:
            images = images.view(-1, s, s)
        elif images.dim() == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.dim() != 3 or images.shape[1:] != (s, s):
            raise ValueError(f"expected images of shape (batch, {s}, {s}), (batch, 1, {s}, {s}) "
                             f"or (batch, {s * s}), got {tuple(images.shape)}")
        g = s // p
        patches = images.reshape(-1, g, p, g, p).transpose(2, 3)  # (b, g, g, p, p)
        return patches.reshape(-1, g * g, p * p)  # (b, n_patches, p·p), row-major patch order

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.patchify(images)) + self.pos_embed  # (b, n_patches, d)
        for block in self.blocks:
            x = block(x)  # (b, n_patches, d)
        return self.head(self.norm(x.mean(dim=1)))  # (b, d) -> (b, n_classes)


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
