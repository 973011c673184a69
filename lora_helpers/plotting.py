"""Pictures of weight matrices, of the rank analysis in :mod:`lora_helpers.rank`, and of
fine-tuning results (accuracy against trainable parameters).

Every function takes the same matrices as the rank functions (2-D torch tensors on any device,
with or without grad, or numpy arrays) and returns a matplotlib ``Axes`` or ``Figure``; none calls
``plt.show()`` or prints. Weight heatmaps use a diverging colormap (red > 0, blue < 0) with
symmetric limits ``±vmax``, so white always means 0. Matrices with more than ``max_size`` rows or
columns (128 by default) are shown as block means, and the title says so.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ._checks import as_matrix, check_int
from .rank import Matrix, check_threshold, energy_rank_of_spectrum

__all__ = ["plot_heatmap", "plot_lora_decomposition", "plot_singular_values",
           "plot_subspace_similarity", "plot_accuracy_vs_parameters"]

DIVERGING = "RdBu_r"


def _block_mean(m: np.ndarray, max_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Average ``m`` ``(rows, cols)`` over blocks so that neither side exceeds ``max_size``.

    Returns the ``(ceil(rows/fr), ceil(cols/fc))`` block means and the block size ``(fr, fc)``;
    blocks at the bottom/right edge may be partial and average only the entries they hold.
    """
    rows, cols = m.shape
    fr, fc = math.ceil(rows / max_size), math.ceil(cols / max_size)
    if fr == fc == 1:
        return m, (1, 1)
    nr, nc = math.ceil(rows / fr), math.ceil(cols / fc)
    padded, count = np.zeros((nr * fr, nc * fc)), np.zeros((nr * fr, nc * fc))
    padded[:rows, :cols], count[:rows, :cols] = m, 1.0
    sums = padded.reshape(nr, fr, nc, fc).sum(axis=(1, 3))  # (nr, nc)
    return sums / count.reshape(nr, fr, nc, fc).sum(axis=(1, 3)), (fr, fc)  # every block has >= 1


def _as_matrix(w: object, name: str) -> torch.Tensor:
    """``w`` as a float64 matrix, refused with a message when a heatmap cannot show it."""
    return as_matrix(w, name, "a heatmap cannot show it")


def _prepare(w: Matrix, name: str, max_size: int) -> tuple[np.ndarray, str, str]:
    """Validate ``w``; return (display data, ``"rows×cols"``, block note or ``""``)."""
    t = _as_matrix(w, name)
    data, (fr, fc) = _block_mean(t.numpy(), max_size)
    note = "" if (fr, fc) == (1, 1) else f"shown as {fr}×{fc} block means"
    return data, f"{t.shape[0]}×{t.shape[1]}", note


def _limit(*data: np.ndarray) -> float:
    """Symmetric colour limit: the largest |value| shown (1.0 if everything is 0)."""
    v = max(float(np.abs(d).max()) for d in data)
    return v if v > 0 else 1.0


def _heatmap(ax: Axes, data: np.ndarray, vmin: float, vmax: float, cmap: str, cbar: bool,
             label: str | None = None) -> None:
    """The picture ``seaborn.heatmap`` draws (row 0 on top, no ticks or spines, a colour bar),
    without its full redraw of the figure on every call, which made a six-panel figure
    several seconds slower (it checks whether automatic tick labels overlap; we draw none)."""
    rows, cols = data.shape
    mesh = ax.pcolormesh(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set(xlim=(0, cols), ylim=(0, rows), xticks=[], yticks=[])
    ax.invert_yaxis()
    for spine in ax.spines.values():
        spine.set_visible(False)
    if cbar:
        bar = ax.figure.colorbar(mesh, ax=ax, label=label)
        bar.outline.set_linewidth(0)


def _draw(ax: Axes, data: np.ndarray, vmax: float, cbar: bool, cmap: str) -> None:
    _heatmap(ax, data, -vmax, vmax, cmap, cbar)


def plot_heatmap(w: Matrix, ax: Axes | None = None, title: str | None = None, *,
                 vmax: float | None = None, cbar: bool = True, cmap: str = DIVERGING,
                 max_size: int = 128) -> Axes:
    """Heatmap of a matrix ``w`` ``(rows, cols)``, centred at 0 with limits ``±vmax``.

    ``vmax`` defaults to the largest |value| shown; pass one value to several calls to give
    them a shared colour scale. The title is ``"<title> (rows×cols)"``, plus a line saying when
    the matrix is shown as block means (more than ``max_size`` rows or columns).
    """
    max_size = check_int(max_size, "max_size", 1, 10**6, "cells per side to draw")
    data, shape, note = _prepare(w, "w", max_size)
    if vmax is None:
        vmax = _limit(data)
    elif isinstance(vmax, bool) or not isinstance(vmax, numbers.Real):
        raise TypeError(f"vmax must be a number (the colour limit), got {vmax!r}")
    elif not 0 < vmax < math.inf:
        raise ValueError(f"vmax must be a positive finite number (the colour limit), got {vmax!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.8), layout="constrained")
    _draw(ax, data, float(vmax), cbar, cmap)
    ax.set_title((f"{title} ({shape})" if title else shape) + (f"\n{note}" if note else ""))
    return ax


def plot_lora_decomposition(layer: object, *, max_size: int = 128) -> Figure:
    """One row of heatmaps reading as the equation ``W0 + s·B·A = W0 + ΔW = W``.

    ``layer`` is a plain-LoRA ``LoRALinear`` (anything with ``.base.weight``, ``.lora_A``,
    ``.lora_B``, ``.scaling``, ``.r`` and ``.delta_weight()``), also on an NF4 base (its
    dequantized weight is drawn as W0); a DoRA layer is refused (its ΔW is not s·B·A). Panels: ``W0`` (out×in), ``B`` (out×r),
    ``A`` (r×in), ``ΔW = s·B·A`` (out×in) and ``W = W0 + ΔW``, sized like the matrices (B is
    narrow, A is short). Colour scales: ``W0`` and ``W`` share one, so the visible difference is
    the real change; ``ΔW``, ``B`` and ``A`` each get their own, since ΔW is usually far smaller
    than W0. Each panel's limit ``±v`` is in its title. A merged layer is un-merged for display.
    """
    needed = ("base", "lora_A", "lora_B", "scaling", "r", "delta_weight")
    missing = [n for n in needed if not hasattr(layer, n)]
    if missing or not hasattr(layer.base, "weight") or not callable(layer.delta_weight):
        raise TypeError(f"plot_lora_decomposition needs a LoRALinear, got {type(layer).__name__} "
                        f"(missing {missing or ['base.weight']}); wrap the layer with "
                        "LoRALinear(nn.Linear(...)) or apply_lora first")
    if getattr(layer, "use_dora", False):
        raise ValueError("plot_lora_decomposition draws W0 + s·B·A = W0 + ΔW, but this is a DoRA "
                         "layer, whose ΔW = m / ‖W0 + s·BA‖_row ⊙ (W0 + s·BA) - W0 is not s·B·A; "
                         "draw its layer.delta_weight() with plot_heatmap instead")
    max_size = check_int(max_size, "max_size", 1, 10**6, "cells per side to draw")
    with torch.no_grad():
        delta = _as_matrix(layer.delta_weight(), "delta_weight()")  # (out, in)
    w0 = _as_matrix(layer.base.weight, "base.weight")  # (out, in)
    if getattr(layer, "merged", False):
        w0 = w0 - delta  # base.weight holds W0 + ΔW after merge()
    panels = {r"$W_0$": w0, r"$B$": layer.lora_B, r"$A$": layer.lora_A,
              r"$\Delta W = s\,BA$": delta, r"$W = W_0 + \Delta W$": w0 + delta}
    names = ["W0", "lora_B", "lora_A", "delta_weight()", "W0 + delta_weight()"]
    shown = [_prepare(m, n, max_size) for n, m in zip(names, panels.values())]
    shared = _limit(shown[0][0], shown[4][0])
    limits = [shared, _limit(shown[1][0]), _limit(shown[2][0]), _limit(shown[3][0]), shared]

    out_f, in_f = w0.shape
    r, s = layer.r, float(layer.scaling)
    widths = [1.0, max(r / in_f, 0.15), 1.0, 1.0, 1.0]  # relative panel widths: B is narrow
    heights = [1.0, 1.0, max(r / out_f, 0.15), 1.0, 1.0]  # and A is short
    operators = [f"+ {s:g} ·", "·", r"$= W_0 +$", "="]  # read: W0 + s·B·A = W0 + ΔW = W
    gaps = [0.3, 0.2, 0.5, 0.2]  # widths of the operator columns
    columns = [x for w, g in zip(widths, gaps) for x in (w, g)] + widths[-1:]  # 9 columns
    fig = plt.figure(figsize=(12.5, 3.8), layout="constrained")
    grid = fig.add_gridspec(2, 9, width_ratios=columns, height_ratios=[1, 0.05])  # row 1: legend
    for k, (name, (data, shape, note), vmax) in enumerate(zip(panels, shown, limits)):
        cell = grid[0, 2 * k]
        if heights[k] < 1:  # centre a shorter panel vertically
            pad = (1 - heights[k]) / 2
            cell = cell.subgridspec(3, 1, height_ratios=[pad, heights[k], pad])[1]
        ax = fig.add_subplot(cell)
        _draw(ax, data, vmax, cbar=False, cmap=DIVERGING)
        ax.set_title(f"{name}\n{shape}\n±{vmax:.2g}" + (f"\n({note})" if note else ""),
                     fontsize="medium")
    for k, op in enumerate(operators):
        ax = fig.add_subplot(grid[0, 2 * k + 1])
        ax.axis("off")
        ax.text(0.5, 0.5, op, ha="center", va="center", fontsize="x-large")
    legend = fig.colorbar(ScalarMappable(Normalize(-1, 1), DIVERGING), ticks=[-1, 0, 1],
                          cax=fig.add_subplot(grid[1, 2:7]), orientation="horizontal")
    legend.ax.set_xticklabels(["−v", "0", "+v"])
    legend.set_label("v = the limit in each title; W0 and W share one, B, A and ΔW have their own")
    fig.suptitle(f"LoRA update of a {out_f}×{in_f} layer: rank r = {r}, scaling s = {s:g}")
    return fig


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
    checked = {name: _as_matrix(w, f"matrices[{name!r}]") for name, w in matrices.items()}
    eps = {name: _machine_epsilon(w) for name, w in matrices.items()}
    spectra = {name: torch.linalg.svdvals(t) for name, t in checked.items()}  # each (k,)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    twin = ax.twinx() if energy else None
    for (name, s), color in zip(spectra.items(), sns.color_palette(n_colors=len(spectra))):
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


def plot_subspace_similarity(grid: Matrix, ax: Axes | None = None, title: str | None = None, *,
                             cbar: bool = True, d: int | None = None) -> Axes:
    """Heatmap of ``φ(i, j)`` from :func:`~lora_helpers.subspace_similarity_grid` (paper Fig. 3).

    ``grid`` is ``(r1, r2)`` with values in [0, 1]; row i (top = 1) and column j are 1-based.

    With ``d`` (the input width the directions live in), the map shows ``φ(i, j) - max(i, j)/d``
    instead: φ minus its expected value for two random subspaces of ``R^d`` (the chance level),
    on a diverging map with limits ±1 (red above chance, white at chance, blue below). Without
    it, φ itself on ``[0, 1]``, where the chance level rises to 1 towards ``j = d``.
    """
    t = _as_matrix(grid, "grid")
    if t.min() < -1e-6 or t.max() > 1 + 1e-6:
        raise ValueError(f"grid values must lie in [0, 1] (φ from subspace_similarity_grid), got "
                         f"the range [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    shown = t.clamp(0, 1).numpy()  # (r1, r2)
    if d is not None:
        d = check_int(d, "d", max(t.shape), why="the width of the space; φ(i, j) needs i, j <= d")
        i = np.arange(1, t.shape[0] + 1)[:, None]  # (r1, 1)
        j = np.arange(1, t.shape[1] + 1)[None, :]  # (1, r2)
        shown = shown - np.maximum(i, j) / d  # (r1, r2): φ minus its chance level
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.8), layout="constrained")
    label = "φ(i, j)" if d is None else f"φ(i, j) − max(i, j)/{d}"
    _heatmap(ax, shown, 0 if d is None else -1, 1, "viridis" if d is None else DIVERGING, cbar, label)
    for n, axis in ((t.shape[1], ax.xaxis), (t.shape[0], ax.yaxis)):
        step = math.ceil(n / 10)
        ticks = [1] + list(range(step, n + 1, step)) if step > 1 else list(range(1, n + 1))
        axis.set_ticks([k - 0.5 for k in ticks], labels=[str(k) for k in ticks])  # cell centres
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_xlabel("j (top-j directions of A₂)")
    ax.set_ylabel("i (top-i directions of A₁)")
    default = "Subspace similarity φ(i, j)" if d is None else "φ(i, j) minus chance"
    ax.set_title(title or f"{default}, {t.shape[0]}×{t.shape[1]}")
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
    for (name, points), color in zip(series.items(), sns.color_palette(n_colors=len(series))):
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
