"""A tiny transformer to adapt: attention with separate q/k/v/out projections.

The building blocks (``MultiHeadSelfAttention``, ``MLP``, ``TransformerBlock``) and the digits
classifier ``TinyTransformerClassifier``; the character language model built from the same
blocks, ``CharGPT``, and ``generate`` are in :mod:`lora_helpers.language_model`.

The projections carry Hugging Face's names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``;
``fc1``, ``fc2`` in the MLP), so ``target_modules=["q_proj", "v_proj"]`` means here what it means
in PEFT. The attention math is written out (no ``nn.MultiheadAttention``, whose packed
``in_proj_weight`` hides the projections from LoRA; see notebook 03).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_int

__all__ = ["MultiHeadSelfAttention", "MLP", "TransformerBlock", "TinyTransformerClassifier"]


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
