"""Plot smoke tests on the Agg backend: structure, titles, colour limits, speed, bad input."""


import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from lora_helpers import (LoRALinear, energy_rank, plot_heatmap,  # noqa: E402
                          plot_lora_decomposition, plot_singular_values,
                          plot_subspace_similarity, subspace_similarity_grid)

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(autouse=True)
def close_figures(capsys):
    yield
    plt.close("all")
    assert capsys.readouterr() == ("", "")  # plotting never prints


def mesh(ax):
    """The heatmap's QuadMesh: its displayed array and colour limits."""
    (quad,) = [c for c in ax.collections if hasattr(c, "get_clim")]
    return quad


# ---------------------------------------------------------------- plot_heatmap

@settings(deadline=None, max_examples=15)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), seed=st.integers(0, 1000))
def test_heatmap_limits_are_symmetric_and_cover_the_data(rows, cols, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols)) + 0.5  # off-centre on purpose
    ax = plot_heatmap(w)
    try:
        vmin, vmax = mesh(ax).get_clim()
        assert vmin == -vmax and vmax == pytest.approx(np.abs(w).max())
        assert mesh(ax).get_array().shape == (rows, cols)
        assert ax.get_title() == f"{rows}×{cols}"
    finally:
        plt.close(ax.figure)


def test_heatmap_title_explicit_vmax_and_colorbar_switch():
    w = torch.randn(5, 7, requires_grad=True)
    ax = plot_heatmap(w, title="W0", vmax=3.0)
    assert isinstance(ax, Axes) and ax.get_title() == "W0 (5×7)"
    assert mesh(ax).get_clim() == (-3.0, 3.0)
    assert len(ax.figure.axes) == 2  # heatmap + colour bar
    ax = plot_heatmap(w.to(torch.bfloat16), cbar=False)
    assert len(ax.figure.axes) == 1


def test_heatmap_draws_into_a_given_axes():
    fig, axes = plt.subplots(1, 2)
    assert plot_heatmap(np.eye(3), ax=axes[1], cbar=False) is axes[1]
    assert len(fig.axes) == 2 and axes[0].get_title() == ""


def test_heatmap_reads_like_a_matrix_without_redrawing_the_figure(monkeypatch):
    # Row 0 on top, no ticks or spines (seaborn's look), and no draw of the whole figure per
    # panel: seaborn.heatmap drew it on every call, seconds for a six-panel figure.
    draws = []
    monkeypatch.setattr(plt.Figure, "draw", lambda self, renderer: draws.append(self))
    ax = plot_heatmap(np.arange(6.0).reshape(2, 3))
    assert draws == []
    assert ax.yaxis_inverted() and len(ax.get_xticks()) == len(ax.get_yticks()) == 0
    assert not any(spine.get_visible() for spine in ax.spines.values())
    assert mesh(ax).get_array().reshape(2, 3)[0, 0] == 0.0   # the first row is drawn at the top


def test_zero_matrix_gets_a_valid_colour_scale():
    assert mesh(plot_heatmap(np.zeros((3, 3)))).get_clim() == (-1.0, 1.0)


def test_large_matrix_is_block_averaged():
    w = torch.randn(1000, 1000, generator=torch.Generator().manual_seed(0))
    ax = plot_heatmap(w, title="W")
    ax.figure.canvas.draw()
    assert mesh(ax).get_array().shape == (125, 125)  # 8×8 blocks
    assert ax.get_title() == "W (1000×1000)\nshown as 8×8 block means"
    # Each displayed cell is the mean of its block.
    assert mesh(ax).get_array()[1, 2] == pytest.approx(w[8:16, 16:24].double().mean().item())


def test_block_means_handle_partial_blocks():
    w = np.arange(300 * 5, dtype=float).reshape(300, 5)  # rows: blocks of 3 -> 100 rows
    data = mesh(plot_heatmap(w, max_size=100)).get_array()
    assert data.shape == (100, 5) and data[0, 0] == pytest.approx((0 + 5 + 10) / 3)
    w = np.ones((7, 3))
    data = mesh(plot_heatmap(w, max_size=3)).get_array()  # 3 blocks of 3, 3, 1 rows
    assert data.shape == (3, 3) and np.allclose(data, 1.0)


# ---------------------------------------------------------------- plot_lora_decomposition

def lora_layer(merged=False):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 24), r=4, lora_alpha=8, init_lora_weights=False)
    if merged:
        layer.merge()
    return layer


def heatmaps(fig):
    return [ax for ax in fig.axes if ax.collections and ax.get_title()]


def test_decomposition_panels_shapes_and_equation():
    layer = lora_layer()
    fig = plot_lora_decomposition(layer)
    assert isinstance(fig, Figure)
    panels = heatmaps(fig)
    assert len(panels) == 5
    titles = [ax.get_title() for ax in panels]
    for title, shape in zip(titles, ["24×32", "24×4", "4×32", "24×32", "24×32"]):
        assert shape in title
    assert "W_0" in titles[0] and "B" in titles[1] and "A" in titles[2] and "Delta W" in titles[3]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["+ 2 ·", "·", r"$= W_0 +$", "="]  # W0 + 2·B·A = W0 + ΔW = W
    assert "scaling s = 2" in fig.get_suptitle()


def test_decomposition_colour_scales():
    layer = lora_layer()
    w0, delta = layer.base.weight.detach(), layer.delta_weight().detach()
    panels = heatmaps(plot_lora_decomposition(layer))
    clims = [mesh(ax).get_clim() for ax in panels]
    assert all(lo == -hi for lo, hi in clims)
    shared = max(w0.abs().max(), (w0 + delta).abs().max()).item()
    assert clims[0] == clims[4] == pytest.approx((-shared, shared))  # W0 and W share a scale
    assert clims[1][1] == pytest.approx(layer.lora_B.abs().max().item())
    assert clims[2][1] == pytest.approx(layer.lora_A.abs().max().item())
    assert clims[3][1] == pytest.approx(delta.abs().max().item())  # ΔW: its own scale
    w_panel = mesh(panels[4]).get_array()
    np.testing.assert_allclose(w_panel, (w0 + delta).double().numpy(), atol=1e-6)


def test_decomposition_of_a_merged_layer_shows_the_original_w0():
    layer = lora_layer()
    with torch.no_grad():
        w0, delta = layer.base.weight.clone(), layer.delta_weight()
        expected = [w0, layer.lora_B, layer.lora_A, delta, w0 + delta]  # the unmerged panels
        layer.merge()
        merged = [mesh(ax).get_array() for ax in heatmaps(plot_lora_decomposition(layer))]
    for shown, matrix in zip(merged, expected, strict=True):
        np.testing.assert_allclose(shown, matrix.detach().double().numpy(), atol=1e-6)


def test_decomposition_of_a_large_layer_is_downsampled():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(768, 512), r=8, init_lora_weights=False)
    fig = plot_lora_decomposition(layer)
    fig.canvas.draw()
    shapes = [mesh(ax).get_array().shape for ax in heatmaps(fig)]
    assert shapes == [(128, 128), (128, 8), (8, 128), (128, 128), (128, 128)]
    assert "shown as 4×6 block means" in heatmaps(fig)[0].get_title()


@pytest.mark.parametrize("obj,match", [
    (nn.Linear(4, 4), r"got Linear \(missing \['base', 'lora_A'"),
    (object(), "needs a LoRALinear"),
])
def test_decomposition_rejects_other_objects(obj, match):
    with pytest.raises(TypeError, match=match):
        plot_lora_decomposition(obj)


# ---------------------------------------------------------------- plot_singular_values

def test_singular_values_plot_with_energy_twin_axis():
    layer = lora_layer()
    mats = {"W0": layer.base.weight, "ΔW": layer.delta_weight(), "I": np.eye(5)}
    ax = plot_singular_values(mats)
    assert len(ax.figure.axes) == 2 and ax.get_yscale() == "log"
    twin = ax.figure.axes[-1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1] == f"ΔW (24×32): 90% energy at k = {energy_rank(mats['ΔW'])}"
    assert labels[2] == "I (5×5): 90% energy at k = 5"
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [24, 24, 5]
    assert twin.get_ylim()[0] == 0
    energies = [line.get_ydata() for line in twin.get_lines() if line.get_linestyle() == "--"]
    assert energies[2].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_singular_values_energy_rank_markers_are_correct():
    w = np.diag([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    ax = plot_singular_values({"w": w}, threshold=0.9, log=False)
    assert ax.get_legend().get_texts()[0].get_text() == "w (4×4): 90% energy at k = 2"
    dots = [line for line in ax.figure.axes[-1].get_lines() if line.get_marker() == "o"]
    assert dots[0].get_xdata().tolist() == [2] and ax.get_yscale() == "linear"


def test_log_scale_leaves_out_numerical_zeros():
    w = np.outer([1.0, 2.0, 3.0], [1.0, 1.0, 2.0])  # rank 1: σ_2, σ_3 are ~1e-16 rounding
    sigma = plot_singular_values({"w": w}).get_lines()[0].get_ydata()
    assert np.isfinite(sigma[0]) and np.isnan(sigma[1:]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_log_scale_cutoff_follows_the_dtype(dtype):
    # A rank-3 product in float32 has 61 "zero" singular values of rounding noise near 1e-7·σ_1
    # (bfloat16: near 1e-2·σ_1); they are left out, whatever the dtype.
    torch.manual_seed(0)
    b, a = torch.randn(64, 3, dtype=dtype), torch.randn(3, 64, dtype=dtype)
    sigma = plot_singular_values({"BA": b @ a}, energy=False).get_lines()[0].get_ydata()
    assert np.isfinite(sigma[:3]).all() and np.isnan(sigma[3:]).all(), sigma[:6]
    plt.close("all")


def test_singular_values_without_energy_or_log():
    ax = plot_singular_values({"zero": torch.zeros(3, 3), "w": torch.eye(3)}, energy=False)
    assert len(ax.figure.axes) == 1
    assert ax.get_legend().get_texts()[0].get_text() == "zero (3×3)"


@pytest.mark.parametrize("arg,error,match", [
    ([np.eye(3)], TypeError, "must be a dict"),
    ({}, ValueError, "matrices is empty"),
    ({"bad": np.ones(3)}, ValueError, r"matrices\['bad'\] must be a 2-D matrix"),
])
def test_singular_values_bad_input(arg, error, match):
    with pytest.raises(error, match=match):
        plot_singular_values(arg)


def test_singular_values_bad_threshold():
    with pytest.raises(ValueError, match="threshold must be in"):
        plot_singular_values({"w": np.eye(2)}, threshold=0)


# ---------------------------------------------------------------- plot_subspace_similarity

def test_subspace_similarity_plot_is_figure3_style():
    rng = np.random.default_rng(0)
    grid = subspace_similarity_grid(rng.standard_normal((8, 64)), rng.standard_normal((40, 64)))
    ax = plot_subspace_similarity(grid, title="φ(A_r=8, A_r=40, i, j)")
    assert ax.get_title() == "φ(A_r=8, A_r=40, i, j)"
    assert mesh(ax).get_clim() == (0.0, 1.0)
    assert mesh(ax).get_array().shape == (8, 40)
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(1, 9)]
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    assert xlabels[0] == "1" and xlabels[-1] == "40"
    assert ax.get_xticks()[0] == 0.5  # 1-based labels at cell centres


def test_subspace_similarity_default_title_has_shape():
    ax = plot_subspace_similarity(torch.ones(3, 5), cbar=False)
    assert ax.get_title() == "Subspace similarity φ(i, j), 3×5" and len(ax.figure.axes) == 1


@settings(deadline=None, max_examples=10)
@given(r1=st.integers(1, 8), r2=st.integers(1, 20), extra=st.integers(0, 30), seed=st.integers(0, 99))
def test_subspace_similarity_minus_chance_shows_phi_minus_max_ij_over_d(r1, r2, extra, seed):
    d = max(r1, r2) + extra
    grid = np.random.default_rng(seed).uniform(0, 1, (r1, r2))
    ax = plot_subspace_similarity(grid, d=d, cbar=False)
    i, j = np.meshgrid(np.arange(1, r1 + 1), np.arange(1, r2 + 1), indexing="ij")
    shown = np.asarray(mesh(ax).get_array()).reshape(r1, r2)
    np.testing.assert_allclose(shown, grid - np.maximum(i, j) / d, atol=1e-6)
    assert mesh(ax).get_clim() == (-1.0, 1.0)  # diverging, white = chance
    assert ax.get_title() == f"φ(i, j) minus chance, {r1}×{r2}"


def test_subspace_similarity_minus_chance_is_zero_on_average_for_random_subspaces():
    rng = np.random.default_rng(1)
    grids = [subspace_similarity_grid(rng.standard_normal((8, 64)), rng.standard_normal((64, 64)))
             for _ in range(100)]
    ax = plot_subspace_similarity(torch.stack(grids).mean(0), d=64)
    assert abs(float(np.mean(mesh(ax).get_array()))) < 0.02  # at chance everywhere
    assert ax.figure.axes[-1].get_ylabel() == "φ(i, j) − max(i, j)/64"


@pytest.mark.parametrize("d,error,match", [
    (4, ValueError, r"d=4 is out of range: need d >= 5"),
    (64.0, TypeError, "d must be an int"),
])
def test_subspace_similarity_bad_width(d, error, match):
    with pytest.raises(error, match=match):
        plot_subspace_similarity(np.zeros((3, 5)), d=d)


@pytest.mark.parametrize("grid,error,match", [
    (np.full((2, 2), 1.5), ValueError, r"must lie in \[0, 1\].*\[1.5, 1.5\]"),
    (np.ones(4), ValueError, "2-D matrix"),
    ("grid", TypeError, "grid must be"),
])
def test_subspace_similarity_bad_input(grid, error, match):
    with pytest.raises(error, match=match):
        plot_subspace_similarity(grid)


@pytest.mark.parametrize("call,error,match", [
    (lambda: plot_heatmap([[1.0]]), TypeError, "got list"),
    (lambda: plot_heatmap(np.ones((2, 2, 2))), ValueError, "2-D matrix"),
    (lambda: plot_heatmap(np.zeros((0, 2))), ValueError, "empty"),
    (lambda: plot_heatmap(np.array([[np.inf]])), ValueError, "NaN or inf"),
    (lambda: plot_heatmap(np.eye(2), vmax=0), ValueError, "vmax must be a positive"),
    (lambda: plot_heatmap(np.eye(2), vmax=float("nan")), ValueError, "got nan"),
    (lambda: plot_heatmap(np.eye(2), vmax="1"), TypeError, "vmax must be a number"),
    (lambda: plot_heatmap(np.eye(2), max_size=0), ValueError, "max_size=0 is out of range"),
])
def test_heatmap_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- plot_accuracy_vs_parameters

from lora_helpers import plot_accuracy_vs_parameters  # noqa: E402

RESULTS = [
    {"label": "full", "trainable": 400_778, "accuracy": 0.90},
    {"label": "head only", "trainable": 1_290, "accuracy": 0.70},
    {"label": "r=16", "trainable": 17_674, "accuracy": 0.88, "group": "LoRA q,v"},
    {"label": "r=1", "trainable": 2_314, "accuracy": 0.75, "group": "LoRA q,v"},
    {"label": "r=4", "trainable": 5_386, "accuracy": 0.85, "group": "LoRA q,v"},
]


def test_accuracy_plot_has_log_x_labelled_points_and_joined_groups():
    ax = plot_accuracy_vs_parameters(RESULTS, title="rotated digits")
    assert isinstance(ax, Axes) and ax.get_xscale() == "log"
    assert ax.get_title() == "rotated digits" and "trainable parameters" in ax.get_xlabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["full", "head only", "LoRA q,v"]  # one series per group, in order
    assert lines["full"].get_xdata().tolist() == [400_778]
    assert lines["full"].get_linestyle() == "None"  # a single point is not joined
    sweep = lines["LoRA q,v"]  # joined in order of trainable parameters
    assert sweep.get_xdata().tolist() == [2_314, 5_386, 17_674]
    assert sweep.get_ydata().tolist() == [0.75, 0.85, 0.88] and sweep.get_linestyle() == "-"
    notes = {t.get_text(): t.xy for t in ax.texts}
    assert notes == {r["label"]: (r["trainable"], r["accuracy"]) for r in RESULTS}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["full", "head only", "LoRA q,v"]
    assert ax.get_xlim()[0] < 1_290 and ax.get_xlim()[1] > 400_778  # every point is visible


def test_accuracy_plot_draws_into_a_given_axes_with_a_default_title():
    fig, axes = plt.subplots(1, 2)
    assert plot_accuracy_vs_parameters(RESULTS[:1], ax=axes[1]) is axes[1]
    assert axes[1].get_title() == "Accuracy against trainable parameters"
    assert axes[0].get_lines() == [] and len(fig.axes) == 2


@pytest.mark.parametrize("results,error,match", [
    ({"label": "a", "trainable": 1, "accuracy": 0.5}, TypeError, "must be a list of dicts"),
    ([], ValueError, "results is empty"),
    ([("a", 1, 0.5)], TypeError, r"results\[0\] must be a dict"),
    ([{"label": "a", "trainable": 1}], ValueError, r"results\[0\] lacks \['accuracy'\]"),
    ([{"label": "a", "trainable": 0, "accuracy": 0.5}], ValueError, r"\['trainable'\]=0 is out of range.*log axis"),
    ([{"label": "a", "trainable": 1.5, "accuracy": 0.5}], TypeError, "must be an int"),
    ([{"label": "a", "trainable": 1, "accuracy": 93.0}], ValueError, "not a percentage"),
    ([{"label": "a", "trainable": 1, "accuracy": float("nan")}], ValueError, r"in \[0, 1\]"),
    ([{"label": 3, "trainable": 1, "accuracy": 0.5}], TypeError, "must be strings"),
])
def test_accuracy_plot_bad_input(results, error, match):
    with pytest.raises(error, match=match):
        plot_accuracy_vs_parameters(results)


SAME_BUDGET = [  # two configurations with one parameter count (paper's Table 5 question)
    {"label": "r=16", "trainable": 17_674, "accuracy": 0.836, "std": 0.01, "group": "LoRA q,v"},
    {"label": "r=4", "trainable": 5_386, "accuracy": 0.80, "std": 0.02, "group": "LoRA q,v"},
    {"label": "q,k,v,o r=8", "trainable": 17_674, "accuracy": 0.836, "std": 0.015},
    {"label": "full", "trainable": 400_778, "accuracy": 0.88},  # no std: no error bar
]


def _error_bars(ax):
    # The vertical bars errorbar() draws: one LineCollection per call, segments [(x, y-s), (x, y+s)].
    return {(float(seg[0][0]), round(float(seg[0][1]), 6), round(float(seg[1][1]), 6))
            for c in ax.collections for seg in c.get_segments()}


def test_accuracy_plot_draws_error_bars_of_plus_minus_std():
    ax = plot_accuracy_vs_parameters(SAME_BUDGET)
    assert _error_bars(ax) == {(17_674.0, 0.826, 0.846), (5_386.0, 0.78, 0.82),
                               (17_674.0, 0.821, 0.851)}  # none for "full", which has no std
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["LoRA q,v", "q,k,v,o r=8", "full"]  # bars add no legend entries
    named = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in named] == legend
    assert named[0].get_xdata().tolist() == [5_386, 17_674]  # the group is still one joined line


def test_accuracy_plot_without_std_draws_no_error_bars():
    assert _error_bars(plot_accuracy_vs_parameters(RESULTS)) == set()


def test_accuracy_plot_stacks_labels_of_points_with_the_same_budget():
    ax = plot_accuracy_vs_parameters(SAME_BUDGET)
    notes = {t.get_text(): t for t in ax.texts}
    assert set(notes) == {"r=16", "r=4", "q,k,v,o r=8", "full"}
    assert notes["r=16"].xy == notes["q,k,v,o r=8"].xy == (17_674, 0.836)  # anchored at the point
    first, second = notes["r=16"].xyann, notes["q,k,v,o r=8"].xyann  # offsets in points
    assert first[0] == second[0] and abs(first[1] - second[1]) >= 10  # one above the other
    assert notes["r=4"].xyann == notes["full"].xyann == (4.0, 4.0)  # alone: the usual place
    # Drawn, the two labels' boxes do not overlap.
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    box1, box2 = (notes[k].get_window_extent(renderer) for k in ("r=16", "q,k,v,o r=8"))
    assert not box1.overlaps(box2)
    plt.close(ax.figure)


def test_accuracy_plot_stacks_labels_by_accuracy():
    # The more accurate point's label goes on top, whatever the input order.
    results = [{"label": "low", "trainable": 10, "accuracy": 0.5},
               {"label": "high", "trainable": 10, "accuracy": 0.9}]
    notes = {t.get_text(): t.xyann for t in plot_accuracy_vs_parameters(results).texts}
    assert notes["high"][1] > notes["low"][1]


@pytest.mark.parametrize("std,error,match", [
    (-0.01, ValueError, r"\['std'\] must be in \[0, 1\]"),
    (float("nan"), ValueError, r"\['std'\] must be in \[0, 1\]"),
    (2.0, ValueError, "a spread of accuracies"),
    ("0.01", TypeError, r"\['std'\] must be a number"),
    (True, TypeError, r"\['std'\] must be a number"),
])
def test_accuracy_plot_bad_std(std, error, match):
    with pytest.raises(error, match=match):
        plot_accuracy_vs_parameters([{"label": "a", "trainable": 1, "accuracy": 0.5, "std": std}])


def test_heatmap_of_a_nan_matrix_says_why_it_cannot_be_drawn():
    with pytest.raises(ValueError, match="w contains NaN or inf; a heatmap cannot show it"):
        plot_heatmap(torch.tensor([[1.0, float("nan")]]))


def test_lora_decomposition_on_nf4_draws_and_refuses_dora():
    import torch.nn as tnn
    from lora_helpers import LoRALinear, NF4Linear, plot_lora_decomposition
    torch.manual_seed(0)
    nf4 = LoRALinear(NF4Linear.from_linear(tnn.Linear(64, 32)), r=2, init_lora_weights=False)
    fig = plot_lora_decomposition(nf4)  # used to say "needs a LoRALinear, got LoRALinear"
    assert len(fig.axes) >= 5
    plt.close(fig)
    dora = LoRALinear(tnn.Linear(16, 8), r=2, use_dora=True)
    with pytest.raises(ValueError, match="DoRA layer.*plot_heatmap"):
        plot_lora_decomposition(dora)
