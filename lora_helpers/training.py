"""A small, explicit training loop for classifiers, its evaluation, and what the optimizer holds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_int
from .data import DigitsSplit, load_digits_split
from .models import TinyTransformerClassifier

__all__ = ["History", "train", "evaluate", "optimizer_state_bytes", "pretrain_digits_classifier"]


@dataclass
class History:
    """What ``train`` measured: per-epoch lists, the total wall time, and the optimizer used."""

    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    optimizer: torch.optim.Optimizer | None = None


def _check_data(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{what}: x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
    if y.dtype != torch.int64:
        raise TypeError(f"{what}: labels must be class indices of dtype torch.int64, got "
                        f"{y.dtype}; convert with y.long()")
    if y.dim() != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{what}: need as many images as labels (and at least one), got x "
                         f"{tuple(x.shape)} and y {tuple(y.shape)}")


def train(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *, epochs: int,
          lr: float, batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
          x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
          progress: bool = True) -> History:
    """Train ``model`` with AdamW and cross-entropy on the parameters that require grad.

    Args:
        x_train: inputs ``(n, ...)``; y_train: class indices ``(n,)``.
        epochs, lr, batch_size, weight_decay: the usual; the batch order is seeded by ``seed``
            (dropout and model initialisation use the global RNG: seed it with
            ``torch.manual_seed`` for a fully reproducible run).
        x_val, y_val: optional validation data, evaluated after every epoch.
        progress: show a ``tqdm.auto`` progress bar over epochs.
    Returns:
        a ``History``; the model is trained in place and left in eval mode.
    """
    _check_data(x_train, y_train, "training data")
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither")
    if x_val is not None:
        _check_data(x_val, y_val, "validation data")
    epochs, batch_size = check_int(epochs, "epochs"), check_int(batch_size, "batch_size")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train (did you freeze everything?)")

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = History(optimizer=optimizer)
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc="epochs", disable=not progress, leave=False):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)  # (n,)
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]  # (batch,)
            logits = model(x_train[idx])  # (batch, n_classes)
            if y_train[idx].max() >= logits.shape[1] or y_train[idx].min() < 0:
                raise ValueError(f"labels must be in [0, {logits.shape[1]}) for a model with "
                                 f"{logits.shape[1]} outputs, got labels from "
                                 f"{y_train.min().item()} to {y_train.max().item()}")
            loss = nn.functional.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(dim=1) == y_train[idx]).sum().item()
        history.loss.append(total_loss / len(order))
        history.train_accuracy.append(correct / len(order))
        if x_val is not None:
            history.val_accuracy.append(evaluate(model, x_val, y_val))
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Accuracy of ``model`` on ``(x, y)``, in [0, 1]; restores the model's train/eval mode."""
    _check_data(x, y, "evaluation data")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(y)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (for Adam: ``exp_avg``, ``exp_avg_sq``, ``step``)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))


def pretrain_digits_classifier(seed: int = 0, epochs: int = 20, lr: float = 3e-3,
                               progress: bool = False, **model_kwargs
                               ) -> tuple[TinyTransformerClassifier, DigitsSplit, History]:
    """Build a ``TinyTransformerClassifier`` and train it on the original digits.

    The starting point of notebooks 04–06: the "pretrained model" that is later adapted. The model
    (initialised with ``torch.manual_seed(seed)``), the split (``load_digits_split(seed=0)``) and
    the training order are all seeded, so one machine reproduces it exactly.

    Returns:
        ``(model in eval mode, the original-digits split, training history)``.
    """
    split = load_digits_split()
    torch.manual_seed(seed)
    model = TinyTransformerClassifier(**model_kwargs)
    history = train(model, split.x_train, split.y_train, epochs=epochs, lr=lr, seed=seed,
                    progress=progress)
    return model, split, history
