"""Real data without downloads: scikit-learn's bundled handwritten digits, and tasks made from them.

``sklearn.datasets.load_digits`` ships 1,797 real 8×8 grey-level images of handwritten digits
(UCI "Optical Recognition of Handwritten Digits") inside the scikit-learn package. A model is
pretrained on the original images; the downstream tasks below are domain shifts of the same
images, to adapt to with full fine-tuning or LoRA.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._checks import check_int

__all__ = ["DigitsSplit", "TaskSplit", "TASKS", "few_label_split", "load_digits_split", "make_task"]


class DigitsSplit(NamedTuple):
    """Train/test tensors: images float32 ``(n, 8, 8)`` in [0, 1], labels int64 ``(n,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class TaskSplit(NamedTuple):
    """Train/validation/test tensors for a few-label task (see ``few_label_split``).

    Images float32 ``(n, 8, 8)``, labels int64 ``(n,)``. Tune on ``val``; touch ``test`` once.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _rotated(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 1, dims=(1, 2))  # (n, 8, 8), 90° counter-clockwise


def _flipped(x: torch.Tensor) -> torch.Tensor:
    return x.flip(2)  # (n, 8, 8), mirrored left-right


def _inverted(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x  # (n, 8, 8), white digit on black becomes black on white


def _transposed(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # (n, 8, 8), mirrored along the main diagonal


_TRANSFORMS = {"original": lambda x: x, "rotated": _rotated, "flipped": _flipped,
               "inverted": _inverted, "transposed": _transposed}
TASKS: tuple[str, ...] = tuple(_TRANSFORMS)
"""Task names: ``"original"`` (pretraining) and four domain shifts with the same labels."""


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> DigitsSplit:
    """Load the 1,797 digits as tensors with a seeded, stratified train/test split.

    Pixel values (0–16 in the raw data) are scaled to [0, 1]. The same ``seed`` always gives the
    same split; every class keeps its share in both parts.
    """
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) \
            or not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}; e.g. 0.25")
    # Imported here, not at the top: scikit-learn (and SciPy under it) takes a second or more to
    # import, and only this loader needs it (notebooks 07, 09, 10 never load the digits).
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)  # (1797, 64) floats in 0..16, (1797,)
    x = torch.tensor(images / 16.0, dtype=torch.float32).view(-1, 8, 8)  # (n, 8, 8) in [0, 1]
    y = torch.tensor(labels, dtype=torch.int64)  # (n,)
    train_idx, test_idx = train_test_split(torch.arange(len(y)).numpy(), test_size=test_size,
                                           random_state=seed, stratify=labels)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DigitsSplit(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def make_task(split: DigitsSplit, name: str) -> DigitsSplit:
    """Return the split with task ``name``'s transform applied to every image (labels unchanged)."""
    if not isinstance(name, str) or name not in _TRANSFORMS:
        raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
    transform = _TRANSFORMS[name]
    return DigitsSplit(transform(split.x_train).contiguous(), split.y_train,
                       transform(split.x_test).contiguous(), split.y_test)


def few_label_split(split: DigitsSplit, per_class: int = 30, seed: int = 0) -> TaskSplit:
    """Keep ``per_class`` labelled training images of each digit; the rest become validation data.

    A downstream task rarely has many labels, but the digits' training part has 1,347 images:
    the ``10 * per_class`` chosen (seeded, per digit) are the training set, the remaining
    training images a validation set for choosing hyperparameters, and the test set is kept
    untouched for the final report. Training and validation images never overlap.

    Args:
        split: a ``DigitsSplit`` (e.g. ``make_task(load_digits_split(), "rotated")``).
        per_class: labelled training images per digit, at least 1 and fewer than the smallest
            class has (so that every digit is also in the validation set).
        seed: the choice of images.
    Returns:
        a ``TaskSplit`` whose training labels hold exactly ``per_class`` of each class.
    """
    per_class = check_int(per_class, "per_class")
    counts = torch.bincount(split.y_train)  # (n_classes,)
    if per_class >= int(counts.min()):
        raise ValueError(f"per_class={per_class} leaves no validation image for some digit (the "
                         f"smallest class has {int(counts.min())} training images); use fewer")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.cat([torch.nonzero(split.y_train == c).flatten()[
        torch.randperm(int(counts[c]), generator=generator)[:per_class]]
        for c in range(len(counts))]).sort().values  # (n_classes * per_class,)
    rest = torch.ones(len(split.y_train), dtype=torch.bool)  # (n_train,)
    rest[keep] = False
    return TaskSplit(split.x_train[keep], split.y_train[keep], split.x_train[rest],
                     split.y_train[rest], split.x_test, split.y_test)
