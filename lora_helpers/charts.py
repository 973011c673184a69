"""Charts of numbers: singular-value spectra with their cumulative energy (the rank analysis of
:mod:`lora_helpers.rank`), and fine-tuning results as accuracy against trainable parameters.

Each function takes plain data (matrices as 2-D torch tensors or numpy arrays; results as dicts)
and returns the matplotlib ``Axes`` it drew into; none calls ``plt.show()`` or prints. Pictures
of matrices themselves (heatmaps) are in :mod:`lora_helpers.plotting`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from itertools import cycle, islice

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb

from ._checks import as_matrix, check_int
from .rank import Matrix, check_threshold, energy_rank_of_spectrum

__all__ = ["plot_singular_values", "plot_accuracy_vs_parameters"]


def _palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` RGB colours from matplotlib's current colour cycle, repeated as needed (what
    ``seaborn.color_palette(n_colors=n)`` returns, without importing seaborn and pandas)."""
    cycler = plt.rcParams["axes.prop_cycle"]
    colors = cycler.by_key()["color"] if "color" in cycler.keys else [".15"]
    return [to_rgb(c) for c in islice(cycle(colors), n)]

def _machine_epsilon(w: torch.Tensor | np.ndarray) -> float:
    """The machine epsilon of ``w``'s floating dtype (float64's for integer matrices)."""
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return torch.finfo(w.dtype).eps
    if isinstance(w, np.ndarray) and w.dtype.kind == "f":
        return float(np.finfo(w.dtype).eps)
    return float(np.finfo(np.float64).eps)


def plot_singular_values(matrices: Mapping[str, Matrix], ax: Axes | None = None, log: bool = True,
                         energy: bool = True, threshold: float = 0.9) -> Axes:
    """Singular values ``σ_i`` of several matrices (solid), on one axes.

    On a log axis, numerical zeros are left out: values ``σ_i <= max(rows, cols) · eps · σ_1``,
    with ``eps`` the machine epsilon of the matrix's own dtype (numpy's ``matrix_rank`` rule), so
    that the rounding noise of a float32 low-rank product is not drawn as a spectrum.
    With ``energy=True``, a twin y-axis on the right shows each cumulative energy
    ``Σ_{i<=k} σ_i² / Σ σ_i²`` (dashed), a dotted line at ``threshold`` and a dot at each energy
    rank (also in the legend). Returns the left (σ) axes; the twin is ``ax.figure.axes[-1]``.
    """
    if not isinstance(matrices, Mapping):
        raise TypeError(f"matrices must be a dict {{name: matrix}}, got {type(matrices).__name__};"
                        " e.g. {'W0': layer.base.weight, 'ΔW': layer.delta_weight()}")
    if not matrices:
        raise ValueError("matrices is empty; pass at least one {name: matrix}")
    threshold = check_threshold(threshold)
    checked = {name: as_matrix(w, f"matrices[{name!r}]", "a heatmap cannot show it")
               for name, w in matrices.items()}
    eps = {name: _machine_epsilon(w) for name, w in matrices.items()}
    spectra = {name: torch.linalg.svdvals(t) for name, t in checked.items()}  # each (k,)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    twin = ax.twinx() if energy else None
    for (name, s), color in zip(spectra.items(), _palette(len(spectra))):
        i = np.arange(1, len(s) + 1)  # 1-based index
        sigma = s.numpy().copy()
        if log:  # leave out numerical zeros, which would stretch the log axis to 1e-30
            sigma[sigma <= max(checked[name].shape) * eps[name] * sigma[0]] = np.nan
        label = f"{name} ({checked[name].shape[0]}×{checked[name].shape[1]})"
        if twin is not None and s.sum() > 0:
            cumulative = (s ** 2).cumsum(0).numpy() / float((s ** 2).sum())  # (k,)
            k = energy_rank_of_spectrum(s, threshold)
            twin.plot(i, cumulative, ls="--", color=color)
            twin.plot([k], [cumulative[k - 1]], "o", color=color)
            label += f": {threshold:.0%} energy at k = {k}"
        ax.plot(i, sigma, color=color, label=label)
    if log and any(float(s[0]) > 0 for s in spectra.values()):  # all-zero: stay linear
        ax.set_yscale("log")
    if twin is not None:
        twin.axhline(threshold, color="grey", lw=0.8, ls=":")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("cumulative energy (dashed)")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"singular value $\sigma_i$ (solid)")
    ax.set_title("Singular values" + (" and cumulative energy" if energy else ""))
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    return ax


def _check_result(i: int, result: object) -> tuple[str, int, float, str | None, float | None]:
    """Validate ``results[i]``; return ``(label, trainable, accuracy, group, std)``."""
    if not isinstance(result, Mapping):
        raise TypeError(f"results[{i}] must be a dict with 'label', 'trainable' and 'accuracy', "
                        f"got {type(result).__name__}")
    missing = [k for k in ("label", "trainable", "accuracy") if k not in result]
    if missing:
        raise ValueError(f"results[{i}] lacks {missing}; each result needs 'label' (str), "
                         "'trainable' (int >= 1) and 'accuracy' (in [0, 1])")
    label, trainable, accuracy = result["label"], result["trainable"], result["accuracy"]
    group, std = result.get("group"), result.get("std")
    if not isinstance(label, str) or (group is not None and not isinstance(group, str)):
        raise TypeError(f"results[{i}]: 'label' and 'group' must be strings, got "
                        f"{label!r} and {group!r}")
    trainable = check_int(trainable, f"results[{i}]['trainable']", 1,
                          why="a parameter count, drawn on a log axis")
    if isinstance(accuracy, bool) or not isinstance(accuracy, numbers.Real):
        raise TypeError(f"results[{i}]['accuracy'] must be a number in [0, 1], got {accuracy!r}")
    if not 0.0 <= accuracy <= 1.0:  # also rejects NaN
        raise ValueError(f"results[{i}]['accuracy'] must be in [0, 1] (a fraction, not a "
                         f"percentage), got {accuracy!r}")
    if std is not None:
        if isinstance(std, bool) or not isinstance(std, numbers.Real):
            raise TypeError(f"results[{i}]['std'] must be a number >= 0 (the spread of the "
                            f"accuracy over seeds) or absent, got {std!r}")
        if not 0.0 <= std <= 1.0:  # also rejects NaN
            raise ValueError(f"results[{i}]['std'] must be in [0, 1] (a spread of accuracies, "
                             f"as a fraction), got {std!r}")
        std = float(std)
    return label, int(trainable), float(accuracy), group, std


LABEL_STEP_PT = 11.0
"""Vertical distance (points) between the labels of points that share one x value."""


def _label_offsets(checked: Sequence[tuple[str, int, float, str | None, float | None]]
                   ) -> list[tuple[float, float]]:
    """Text offsets (points) for the labels, so that points with the same x don't overprint.

    A point's label sits up and to the right of it. Points with equal ``trainable`` (the same x,
    e.g. two LoRA configurations with the same budget) get their labels stacked downwards in
    order of decreasing accuracy, ``LABEL_STEP_PT`` apart, so two equal accuracies still give two
    readable labels.
    """
    offsets = [(4.0, 4.0)] * len(checked)
    same_x: dict[int, list[int]] = {}
    for i, (_, trainable, *_) in enumerate(checked):
        same_x.setdefault(trainable, []).append(i)
    for indices in same_x.values():
        ranked = sorted(indices, key=lambda i: -checked[i][2])  # highest accuracy first
        for k, i in enumerate(ranked):
            offsets[i] = (4.0, 4.0 - LABEL_STEP_PT * k)
    return offsets


def plot_accuracy_vs_parameters(results: Sequence[Mapping[str, object]], ax: Axes | None = None,
                                title: str | None = None) -> Axes:
    """Test accuracy against the number of trainable parameters (log x), one labelled point each.

    Args:
        results: one mapping per method, with ``"label"`` (str, written next to the point),
            ``"trainable"`` (int >= 1, the x value), ``"accuracy"`` (in [0, 1], the y value;
            e.g. a mean over seeds), optionally ``"std"`` (in [0, 1]: drawn as an error bar of
            ± std) and optionally ``"group"`` (str). Points of one group share a colour and a
            legend entry and are joined by a line in order of ``trainable`` (e.g. a rank sweep);
            points without a group are drawn one colour each, named by their label. Labels of
            points with the same ``trainable`` are stacked so that they stay readable.
        ax: axes to draw into; a new figure if None.
        title: the axes title (default "Accuracy against trainable parameters").
    Returns:
        the axes (x axis logarithmic).
    """
    if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
        raise TypeError(f"results must be a list of dicts, got {type(results).__name__}; e.g. "
                        "[{'label': 'full', 'trainable': 102090, 'accuracy': 0.93}]")
    if not results:
        raise ValueError("results is empty; pass at least one {'label', 'trainable', 'accuracy'}")
    checked = [_check_result(i, r) for i, r in enumerate(results)]
    series: dict[str, list[tuple[int, float, float | None]]] = {}  # legend name -> points
    for label, trainable, accuracy, group, std in checked:
        series.setdefault(group if group is not None else label, []).append(
            (trainable, accuracy, std))
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for (name, points), color in zip(series.items(), _palette(len(series))):
        points = sorted(points, key=lambda p: p[:2])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "o-" if len(xs) > 1 else "o", color=color, label=name)
        errors = [(x, y, s) for x, y, s in points if s is not None]
        if errors:  # bars only: the line above carries the legend entry
            ex, ey, es = zip(*errors)
            ax.errorbar(ex, ey, yerr=es, fmt="none", ecolor=color, elinewidth=1, capsize=3)
    for (label, trainable, accuracy, _, _), offset in zip(checked, _label_offsets(checked)):
        ax.annotate(label, (trainable, accuracy), xytext=offset, textcoords="offset points",
                    fontsize="small")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "Accuracy against trainable parameters")
    ax.legend(fontsize="small", loc="lower right")
    return ax
