"""LoRA on an embedding table: ``E' = E0 + scaling · (B A)ᵀ``, in PEFT's layout and init.

An ``nn.Embedding`` holds a table ``E0`` of shape ``(num_embeddings, embedding_dim)``; looking up
token ``t`` is multiplying its one-hot vector ``e_t`` (length ``num_embeddings``) by the table:
``E0ᵀ e_t``. Read as a linear layer from one-hot vectors, its weight is ``E0ᵀ`` with
``in = num_embeddings`` and ``out = embedding_dim``, and LoRA's update of that weight is
``scaling · B A`` with::

    lora_embedding_A: (r, num_embeddings)    one r-vector per token (a "low-rank code")
    lora_embedding_B: (embedding_dim, r)     shared by every token

so ``ΔE = scaling · (B A)ᵀ`` is ``(num_embeddings, embedding_dim)``, and token ``t`` gets
``E0[t] + scaling · B A[:, t]``. These are PEFT's (``lora.layer.Embedding``) and loralib's names
and shapes.

**Initialisation is the reverse of ``LoRALinear``'s**: A = 0 and B ~ N(0, 1) (loralib, PEFT).
Both choices start at ``ΔE = 0``. Why this way round is our reading (neither library says): A's
columns are per-token, and the gradient reaching ``A[:, t]`` is ``scaling · Bᵀ g_t`` summed over
the positions holding token ``t``, so it is nonzero only for tokens that occur in the batch. With
A = 0 a token that never occurs in the adaptation data keeps ``ΔE[t] = 0`` exactly (without
weight decay): its embedding does not move. With the linear layer's choice (A random, B = 0),
the first step on the shared B would move *every* row by ``scaling · B A[:, t]``, seen or not.
And B ~ N(0, 1) matches ``nn.Embedding``'s own N(0, 1) init, so a token's code ``A[:, t]``
reaches the table at the scale of the table.

Dropout: PEFT creates a dropout module for embeddings but never applies it, and loralib has none
(dropping entries of a one-hot input would drop whole tokens). ``lora_dropout > 0`` is refused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._lora_args import check_lora_args
from .inject import LORA_WRAPPERS, plain_lora_builder
from .lora_layer import LoRALayer

__all__ = ["LoRAEmbedding"]


class LoRAEmbedding(LoRALayer):
    """Wrap a frozen ``nn.Embedding`` with a LoRA update of its table.

    Args:
        base: the embedding to adapt, table ``(num_embeddings, embedding_dim)``; wrapped, not
            copied, and frozen. ``max_norm`` is refused (it rescales rows in place during the
            lookup, so the merged table would not give the same output).
        r: the rank, ``1 <= r <= min(num_embeddings, embedding_dim)``.
        lora_alpha: ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).
        lora_dropout: must be 0.0 (see the module docstring).
        use_rslora: rsLoRA's scaling (arXiv 2312.03732).
        init_lora_weights: ``True``: A = 0, B ~ N(0, 1) (PEFT, loralib); ``False``: both
            N(0, 1), so ``ΔE ≠ 0`` (for tests, as PEFT).

    Shapes:
        input: integer token ids ``(...)`` → output ``(..., embedding_dim)``.
    """

    lora_parameter_names = ("lora_embedding_A", "lora_embedding_B")
    peft_tensor_names = {"lora_embedding_A": "lora_embedding_A",  # PEFT: bare parameters
                         "lora_embedding_B": "lora_embedding_B"}

    def __init__(self, base: nn.Embedding, r: int = 8, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, use_rslora: bool = False,
                 init_lora_weights: bool = True) -> None:
        super().__init__()
        if isinstance(base, LoRAEmbedding):
            raise ValueError("this embedding already has LoRA; adapt the plain nn.Embedding once")
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"base must be an nn.Embedding, got {type(base).__name__}")
        if base.max_norm is not None:
            raise ValueError(f"the embedding has max_norm={base.max_norm}, which renormalises rows "
                             "in place at every lookup: merging would not reproduce the output. "
                             "Adapt an embedding with max_norm=None")
        if lora_dropout != 0.0:
            raise ValueError(f"lora_dropout={lora_dropout!r} on an embedding would drop whole "
                             "tokens of its one-hot input; PEFT ignores it and loralib has none: "
                             "use lora_dropout=0.0")
        n, d = base.weight.shape
        self.r, self.scaling = check_lora_args(r, lora_alpha, 0.0, use_rslora, init_lora_weights,
                                               min(n, d), "min(num_embeddings, embedding_dim)")
        self.base = base
        self.base.requires_grad_(False)
        self.num_embeddings, self.embedding_dim = n, d
        self.lora_alpha, self.use_rslora = lora_alpha, use_rslora
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_embedding_A = nn.Parameter(torch.empty(self.r, n, **factory))  # (r, num_embeddings)
        self.lora_embedding_B = nn.Parameter(torch.empty(d, self.r, **factory))  # (embedding_dim, r)
        self.reset_lora_parameters(init_lora_weights)

    @torch.no_grad()
    def reset_lora_parameters(self, init_lora_weights: bool = True) -> None:
        """A = 0 and B ~ N(0, 1) (``True``), or both ~ N(0, 1) (``False``)."""
        self._check_not_merged()
        nn.init.normal_(self.lora_embedding_B)
        if init_lora_weights:
            nn.init.zeros_(self.lora_embedding_A)
        else:
            nn.init.normal_(self.lora_embedding_A)

    def delta_weight(self) -> torch.Tensor:
        """``ΔE = scaling · (B A)ᵀ``, shape ``(num_embeddings, embedding_dim)``."""
        return (self.lora_embedding_B @ self.lora_embedding_A).T * self.scaling  # (d, r)@(r, n) -> (n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``E0[x] + scaling · A[:, x]ᵀ Bᵀ``: a lookup in Aᵀ, then a rank-r product.

        Args:
            x: integer token ids ``(...)``, each in ``[0, num_embeddings)``.
        Returns:
            ``(..., embedding_dim)``.
        """
        if x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be int64 or int32, got {x.dtype}")
        result = self.base(x)  # (..., d)
        if self.merged or self.disabled:
            return result
        base = self.base
        codes = F.embedding(x, self.lora_embedding_A.T, padding_idx=base.padding_idx,
                            scale_grad_by_freq=base.scale_grad_by_freq,
                            sparse=base.sparse)  # (..., r): column A[:, t] of each token t
        return result + (codes @ self.lora_embedding_B.T) * self.scaling  # (..., r)@(r, d) -> (..., d)

    def extra_repr(self) -> str:
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}")


LORA_WRAPPERS[nn.Embedding] = plain_lora_builder(LoRAEmbedding, "nn.Embedding")  # PEFT has no DoRA here
