"""Pictures of matrices: weight heatmaps, the LoRA decomposition ``W0 + s·B·A = W``, and the
subspace-similarity grid φ(i, j) of :mod:`lora_helpers.rank` (paper §7, Fig. 3).

Every function takes 2-D torch tensors (any device, with or without grad) or numpy arrays and
returns a matplotlib ``Axes`` or ``Figure``; none calls ``plt.show()`` or prints. Weight heatmaps
use a diverging colormap (red > 0, blue < 0) with symmetric limits ``±vmax``, so white always
means 0. Matrices with more than ``max_size`` rows or columns (128 by default) are shown as
block means, and the title says so. Curves (spectra, accuracy against parameters) are in
:mod:`lora_helpers.charts`.
"""

from __future__ import annotations

import math
import numbers

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ._checks import as_matrix, check_int
from .rank import Matrix

__all__ = ["plot_heatmap", "plot_lora_decomposition", "plot_subspace_similarity"]

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
    dequantized weight is drawn as W0); a DoRA layer is refused (its ΔW is not s·B·A). Panels:
    ``W0`` (out×in), ``B`` (out×r), ``A`` (r×in), ``ΔW = s·B·A`` (out×in) and ``W = W0 + ΔW``,
    sized like the matrices (B is narrow, A is short). Colour scales: ``W0`` and ``W`` share
    one, so the visible difference is the real change; ``ΔW``, ``B`` and ``A`` each get their
    own, since ΔW is usually far smaller than W0. Each panel's limit ``±v`` is in its title. A
    merged layer is un-merged for display.
    """
    _check_decomposable(layer)
    max_size = check_int(max_size, "max_size", 1, 10**6, "cells per side to draw")
    panels, (out_f, in_f) = _decomposition_panels(layer, max_size)
    return _draw_decomposition(panels, out_f, in_f, layer.r, float(layer.scaling))


def _check_decomposable(layer: object) -> None:
    """Refuse what is not a plain-LoRA linear layer, saying what to pass instead."""
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


def _decomposition_panels(layer, max_size: int
                          ) -> tuple[list[tuple[str, np.ndarray, str, str, float]], tuple[int, int]]:
    """The five panels ``(title, data shown, "rows×cols", block note, limit v)`` and W0's shape."""
    with torch.no_grad():
        delta = _as_matrix(layer.delta_weight(), "delta_weight()")  # (out, in)
    w0 = _as_matrix(layer.base.weight, "base.weight")  # (out, in)
    if getattr(layer, "merged", False):
        w0 = w0 - delta  # base.weight holds W0 + ΔW after merge()
    matrices = {r"$W_0$": w0, r"$B$": layer.lora_B, r"$A$": layer.lora_A,
                r"$\Delta W = s\,BA$": delta, r"$W = W_0 + \Delta W$": w0 + delta}
    names = ["W0", "lora_B", "lora_A", "delta_weight()", "W0 + delta_weight()"]
    shown = [_prepare(m, n, max_size) for n, m in zip(names, matrices.values())]
    shared = _limit(shown[0][0], shown[4][0])  # W0 and W share one scale
    limits = [shared, _limit(shown[1][0]), _limit(shown[2][0]), _limit(shown[3][0]), shared]
    panels = [(title, *prepared, v) for title, prepared, v in zip(matrices, shown, limits)]
    return panels, tuple(w0.shape)


def _draw_decomposition(panels: list[tuple[str, np.ndarray, str, str, float]], out_f: int,
                        in_f: int, r: int, s: float) -> Figure:
    """Lay the panels out as ``W0 + s·B·A = W0 + ΔW = W``, with one shared colour legend."""
    widths = [1.0, max(r / in_f, 0.15), 1.0, 1.0, 1.0]  # relative panel widths: B is narrow
    heights = [1.0, 1.0, max(r / out_f, 0.15), 1.0, 1.0]  # and A is short
    operators = [f"+ {s:g} ·", "·", r"$= W_0 +$", "="]  # read: W0 + s·B·A = W0 + ΔW = W
    gaps = [0.3, 0.2, 0.5, 0.2]  # widths of the operator columns
    columns = [x for w, g in zip(widths, gaps) for x in (w, g)] + widths[-1:]  # 9 columns
    fig = plt.figure(figsize=(12.5, 3.8), layout="constrained")
    grid = fig.add_gridspec(2, 9, width_ratios=columns, height_ratios=[1, 0.05])  # row 1: legend
    for k, (name, data, shape, note, vmax) in enumerate(panels):
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
