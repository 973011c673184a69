"""Small, explicit training loops (classifiers; next-character language models), their
evaluation, and what the optimizer holds. The learning-rate sweep is in ``sweep``."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_int, check_positive
from .text import sample_batch

FOREACH = True
"""Adam(W)'s ``foreach`` implementation, used by ``train``, ``train_language_model`` and
``create_loraplus_optimizer``. On the CPU torch defaults to a Python loop over the parameters;
``foreach=True`` runs the same per-tensor operations from one call, so the trained weights are
bit-identical (``tests/test_training.py`` checks it on every path the notebooks use) and a
small model's training step is about a tenth faster."""

__all__ = ["History", "progress_bar", "train", "evaluate", "optimizer_state_bytes",
           "train_language_model", "bits_per_character"]


@dataclass
class History:
    """What ``train`` (per-epoch lists) or ``train_language_model`` (``loss`` per step,
    ``val_bpc`` at the steps ``eval_steps``) measured, the total wall time, and the optimizer."""

    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_bpc: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0
    optimizer: torch.optim.Optimizer | None = None


def show_progress(progress: bool) -> bool:
    """``progress``, unless the environment variable ``TQDM_DISABLE`` is set (the tests set it).

    tqdm reads ``TQDM_DISABLE`` only as a default, and its notebook bars pass ``disable``
    explicitly, so without this check a bar would still be drawn (and stored) under the tests.
    """
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("1", "true", "yes")


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A ``tqdm.auto`` progress bar for a notebook's own loops, off when ``TQDM_DISABLE`` is set.

    ``tqdm.auto`` draws a widget in Jupyter, and tqdm's notebook bars ignore ``TQDM_DISABLE``;
    the tests set it so that stored notebook outputs hold no bars. Takes tqdm's arguments
    (``total=``, ``desc=``, ...).
    """
    return tqdm(iterable, disable=not show_progress(True), **kwargs)


def _check_data(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{what}: x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
    if y.dtype != torch.int64:
        raise TypeError(f"{what}: labels must be class indices of dtype torch.int64, got "
                        f"{y.dtype}; convert with y.long()")
    if y.dim() != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{what}: need as many images as labels (and at least one), got x "
                         f"{tuple(x.shape)} and y {tuple(y.shape)}")


def _classifier_optimizer(model: nn.Module, lr: float | None, weight_decay: float,
                          optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
    """``train``'s optimizer: AdamW over the parameters that require grad, or the given one,
    checked to hold exactly those (then ``lr`` must be ``None``)."""
    if optimizer is None:
        lr = check_positive(lr, "lr", "1e-3")
    elif lr is not None:
        raise ValueError(f"pass lr=None with optimizer=...: the optimizer's own learning rates "
                         f"are used, so lr={lr!r} would be ignored")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train (did you freeze everything?)")
    if optimizer is None:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=FOREACH)
    if {id(p) for g in optimizer.param_groups for p in g["params"]} != {id(p) for p in params}:
        raise ValueError("the optimizer must hold exactly the model's parameters that require "
                         "grad; build it after freezing (e.g. after apply_lora)")
    return optimizer


def train(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *, epochs: int,
          lr: float | None, batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
          x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
          progress: bool = True, optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` with AdamW and cross-entropy on the parameters that require grad.

    Args:
        x_train: inputs ``(n, ...)``; y_train: class indices ``(n,)``.
        epochs, lr, batch_size, weight_decay: the usual; the batch order is seeded by ``seed``
            (dropout and model initialisation use the global RNG: seed it with
            ``torch.manual_seed`` for a fully reproducible run).
        x_val, y_val: optional validation data, evaluated after every epoch.
        progress: show a ``tqdm.auto`` progress bar over epochs.
        optimizer: an optimizer to use instead of ``AdamW(lr, weight_decay)``, e.g. LoRA+'s
            (``create_loraplus_optimizer``); it must hold exactly the parameters that require
            grad, and then ``lr`` must be ``None`` (the optimizer carries its learning rates).
    Returns:
        a ``History``; the model is trained in place and left in eval mode.
    """
    _check_data(x_train, y_train, "training data")
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither")
    if x_val is not None:
        _check_data(x_val, y_val, "validation data")
    epochs, batch_size = check_int(epochs, "epochs"), check_int(batch_size, "batch_size")
    optimizer = _classifier_optimizer(model, lr, weight_decay, optimizer)
    y_low, y_high = y_train.min().item(), y_train.max().item()
    generator = torch.Generator().manual_seed(seed)
    history = History(optimizer=optimizer)
    start = time.perf_counter()
    for epoch in tqdm(range(epochs), desc="epochs", disable=not show_progress(progress), leave=False):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)  # (n,)
        losses, corrects = [], []  # per batch, read once per epoch (no .item() per step)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]  # (batch,)
            y = y_train[idx]  # (batch,)
            logits = model(x_train[idx])  # (batch, n_classes)
            if epoch == 0 and i == 0 and (y_high >= logits.shape[1] or y_low < 0):
                raise ValueError(f"labels must be in [0, {logits.shape[1]}) for a model with "
                                 f"{logits.shape[1]} outputs, got labels from {y_low} to {y_high}")
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            corrects.append((logits.argmax(dim=1) == y).sum())
        total_loss = 0.0  # a float64 sum of loss × batch size, batch by batch
        for i, batch_loss in zip(range(0, len(order), batch_size), torch.stack(losses).tolist()):
            total_loss += batch_loss * min(batch_size, len(order) - i)
        history.loss.append(total_loss / len(order))
        history.train_accuracy.append(int(torch.stack(corrects).sum()) / len(order))
        if x_val is not None:
            history.val_accuracy.append(evaluate(model, x_val, y_val))
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``(x, y)``, in [0, 1]; restores the model's train/eval mode.

    ``batch_size`` affects only speed: each image's logits do not depend on the others in its
    batch (for the package's models, bit for bit on the CPU: ``tests/test_training.py``). 256
    images keep a small transformer's activations in the CPU's cache; 512 made the notebooks'
    evaluations about 1.5x slower (measured).
    """
    _check_data(x, y, "evaluation data")
    batch_size = check_int(batch_size, "batch_size")
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


def _check_ids(data: torch.Tensor, what: str) -> None:
    if not isinstance(data, torch.Tensor) or data.dtype != torch.long or data.dim() != 1:
        raise TypeError(f"{what} must be a 1-D torch.long tensor of token ids "
                        f"(tokenizer.encode(text)), got {getattr(data, 'dtype', type(data).__name__)} "
                        f"of shape {tuple(getattr(data, 'shape', ()))}")


def _model_context(model: nn.Module, context: int | None) -> int:
    limit = getattr(model, "context", None)
    if context is None:
        if limit is None:
            raise ValueError("pass context=..., the window length (the model has no .context)")
        return limit
    context = check_int(context, "context")
    if limit is not None and context > limit:
        raise ValueError(f"context={context} is longer than the model's context {limit}; "
                         f"use context <= {limit}")
    return context


@torch.no_grad()
def bits_per_character(model: nn.Module, data: torch.Tensor, *, context: int | None = None,
                       batch_size: int = 256) -> float:
    """Cross-entropy of next-character prediction on ``data``, in bits per character.

    ``data`` (token ids ``(n,)``) is cut into ``w = (n - 1) // context`` non-overlapping windows
    of ``context`` inputs; every character from position 1 to ``w · context`` is predicted once,
    from the characters before it in its window (so early positions of a window see little
    context, as in training). The last ``n - 1 - w · context`` characters are not scored. The
    value is ``mean(-log2 p(next character))``: 0 for a perfect model, ``log2(vocab_size)`` for
    a uniform guess. The model's train/eval mode is restored.

    Args:
        model: maps ids ``(b, T)`` to logits ``(b, T, vocab)``.
        data: held-out token ids ``(n,)``, ``torch.long``.
        context: window length; defaults to ``model.context``.
        batch_size: windows per forward pass (memory only; the value does not depend on it
            beyond float rounding).
    """
    _check_ids(data, "data")
    context = _model_context(model, context)
    batch_size = check_int(batch_size, "batch_size")
    n_windows = (len(data) - 1) // context
    if n_windows < 1:
        raise ValueError(f"data has {len(data)} tokens: need at least context + 1 = {context + 1}")
    x = data[:n_windows * context].view(n_windows, context)  # (w, T)
    y = data[1:n_windows * context + 1].view(n_windows, context)  # (w, T), x shifted by one
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, n_windows, batch_size):
        logits = model(x[i:i + batch_size])  # (b, T, vocab)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten(),
                                             reduction="sum").item()  # nats
    model.train(was_training)
    return total / (n_windows * context) / math.log(2)  # nats per character -> bits


def train_language_model(model: nn.Module, data: torch.Tensor, *, steps: int, lr: float,
                         batch_size: int = 32, context: int | None = None,
                         weight_decay: float = 0.0, seed: int = 0,
                         val_data: torch.Tensor | None = None, eval_every: int | None = None,
                         progress: bool = True, desc: str = "steps") -> History:
    """Train a next-character model with AdamW on random windows of ``data``.

    Each step draws ``batch_size`` windows of ``context`` characters (``sample_batch``, seeded
    by ``seed``) and minimises the cross-entropy of predicting every next character. Only the
    parameters that require grad are trained (so a LoRA model trains only A and B).

    Args:
        model: maps ids ``(b, T)`` to logits ``(b, T, vocab)`` (e.g. ``CharGPT``).
        data: training token ids ``(n,)``, ``torch.long``.
        steps, lr, batch_size, weight_decay: the usual; constant learning rate.
        context: window length, defaults to ``model.context``.
        seed: seeds the windows (dropout and initialisation use the global RNG).
        val_data: held-out ids, scored with ``bits_per_character`` every ``eval_every`` steps
            and after the last step (``eval_every=None``: only after the last step).
        progress: a ``tqdm.auto`` bar over the steps.
    Returns:
        a ``History`` with the training loss of every step (nats per character), and
        ``val_bpc`` at ``eval_steps``; the model is left in eval mode.
    """
    _check_ids(data, "training data")
    if val_data is not None:
        _check_ids(val_data, "val_data")
    steps, batch_size = check_int(steps, "steps"), check_int(batch_size, "batch_size")
    context = _model_context(model, context)
    if eval_every is not None:
        eval_every = check_int(eval_every, "eval_every")
        if val_data is None:
            raise ValueError("eval_every needs val_data to evaluate on")
    lr = check_positive(lr, "lr", "3e-3")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train (did you freeze everything?)")

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=FOREACH)
    generator = torch.Generator().manual_seed(seed)
    history = History(optimizer=optimizer)
    start = time.perf_counter()
    losses = []  # per step, read once at the end (no .item() per step)
    model.train()
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not show_progress(progress), leave=False):
        x, y = sample_batch(data, context, batch_size, generator)  # (B, T), (B, T)
        logits = model(x)  # (B, T, vocab)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if val_data is not None and (step == steps or (eval_every and step % eval_every == 0)):
            history.val_bpc.append(bits_per_character(model, val_data, context=context))
            history.eval_steps.append(step)
    history.loss = torch.stack(losses).tolist()
    model.eval()
    history.seconds = time.perf_counter() - start
    return history
