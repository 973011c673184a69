"""tune_learning_rate: a window of a ladder of rates that widens until the pick lies inside."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_helpers import sweep_learning_rate, tune_learning_rate

LADDER = [1e-4 * 2 ** k for k in range(9)]


def counting(scores_by_index):
    """run(lr, seed) from one score per ladder rate (+ a seed offset), counting the calls."""
    calls = []

    def run(lr, seed):
        calls.append((lr, seed))
        return scores_by_index[LADDER.index(lr)] + 0.001 * seed

    return run, calls


@settings(max_examples=60)
@given(peak=st.integers(1, len(LADDER) - 2), first=st.integers(0, len(LADDER) - 3),
       width=st.integers(3, 5), slopes=st.lists(st.floats(0.01, 1.0), min_size=len(LADDER),
                                                 max_size=len(LADDER)))
def test_the_window_finds_the_full_sweeps_pick_for_one_peak_and_runs_each_rate_once(peak, first, width, slopes):
    # scores rising strictly to one peak and falling after it, by random steps
    scores = [0.0] * len(LADDER)
    for i in range(peak - 1, -1, -1):
        scores[i] = scores[i + 1] - slopes[i]
    for i in range(peak + 1, len(LADDER)):
        scores[i] = scores[i - 1] - slopes[i]
    start = LADDER[first:first + width]
    if len(start) < 3:
        return
    run, calls = counting(scores)
    tuned = tune_learning_rate(run, LADDER, start, seeds=(0, 1), progress=False)
    full = sweep_learning_rate(counting(scores)[0], LADDER, seeds=(0, 1), progress=False)
    assert tuned.best_lr == full.best_lr == LADDER[peak] and tuned.inside_grid
    assert len(calls) == len(set(calls)) == 2 * len(tuned.lrs)        # every (lr, seed) once
    assert tuned.lrs == LADDER[LADDER.index(tuned.lrs[0]):LADDER.index(tuned.lrs[-1]) + 1]
    assert set(start) <= set(tuned.lrs)
    # it stops as soon as the pick is inside: the window grew only toward the peak
    lo, hi = LADDER.index(tuned.lrs[0]), LADDER.index(tuned.lrs[-1])
    assert lo == min(first, peak - 1) and hi == max(first + len(start) - 1, peak + 1)
    # the scores it kept are the full sweep's, rate for rate
    assert tuned.scores == full.scores[lo:hi + 1]


def test_the_window_grows_toward_ties_on_its_lower_edge():
    # 2e-4 and 4e-4 tie within one standard error: the tie rule picks the smaller, on the edge,
    # so the next smaller rate joins; it scores clearly worse and the pick moves inside
    table = {1e-4: 0.5, 2e-4: 0.9, 4e-4: 0.905, 8e-4: 0.7}
    sweep = tune_learning_rate(lambda lr, seed: table[lr] + (0.02 if seed else -0.02),
                               LADDER[:4], LADDER[1:4], seeds=(0, 1), progress=False)
    assert sweep.lrs == LADDER[:4] and sweep.best_lr == 2e-4 and sweep.inside_grid


def test_at_the_end_of_the_ladder_it_returns_the_edge_and_check_inside_grid_raises():
    sweep = tune_learning_rate(lambda lr, seed: lr, LADDER, LADDER[3:6], progress=False)
    assert sweep.lrs == LADDER[3:] and sweep.best_lr == LADDER[-1] and not sweep.inside_grid
    with pytest.raises(ValueError, match="largest of the grid"):
        sweep.check_inside_grid("rising")
    losses = tune_learning_rate(lambda lr, seed: lr, LADDER, LADDER[3:6], higher_is_better=False,
                                progress=False)
    assert losses.lrs == LADDER[:6] and losses.best_lr == LADDER[0]


def test_diverged_runs_count_as_worst_while_the_window_grows():
    # the two largest rates diverge; the window starts there and must walk down to the peak
    def run(lr, seed):
        return math.nan if lr >= LADDER[7] else -abs(math.log2(lr / LADDER[4]))
    sweep = tune_learning_rate(run, LADDER, LADDER[6:9], progress=False)
    assert sweep.best_lr == LADDER[4] and sweep.lrs == LADDER[3:9]
    assert sweep.scores[-1] == [-math.inf]


@pytest.mark.parametrize("start,match", [
    ([1e-4, 2e-4], "start must be at least 3"),
    ([1e-4, 2e-4, 5e-4], "not on the ladder"),
    ([1e-4, 2e-4, 8e-4], "skips rates of the ladder"),
])
def test_tune_learning_rate_refuses_a_start_that_is_not_a_window_of_the_ladder(start, match):
    with pytest.raises(ValueError, match=match):
        tune_learning_rate(lambda lr, seed: 0.0, LADDER, start, progress=False)
    with pytest.raises(ValueError, match="ladder must be"):
        tune_learning_rate(lambda lr, seed: 0.0, LADDER[::-1], start, progress=False)


# ---- sweep_learning_rate: one grid, the tie rule ----

def test_sweep_learning_rate_picks_the_best_mean_and_knows_the_edges():
    calls = []

    def run(lr, seed):
        calls.append((lr, seed))
        return {1e-3: 0.5, 3e-3: 0.9, 1e-2: 0.7}[lr] + (0.02 if seed else -0.02)

    sweep = sweep_learning_rate(run, [1e-3, 3e-3, 1e-2], seeds=(0, 1), progress=False)
    assert calls == [(lr, s) for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)]
    assert sweep.best_lr == 3e-3 and sweep.inside_grid and sweep.check_inside_grid() == 3e-3
    assert sweep.mean == pytest.approx([0.5, 0.9, 0.7]) and sweep.std[0] == pytest.approx(0.02828, rel=1e-3)
    assert "0.003" in sweep.table() and sweep.table().count("*") == 1
    rows = sweep_learning_rate(lambda lr, seed: lr, [2.5e-3, 5e-3, 0.16], progress=False).table().splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["0.0025", "0.005", "0.16"]  # each rate as given, not rounded
    losses = sweep_learning_rate(lambda lr, seed: lr, [1e-3, 3e-3, 1e-2], higher_is_better=False,
                                 progress=False)
    assert losses.best_lr == 1e-3 and not losses.inside_grid
    with pytest.raises(ValueError, match="smallest of the grid"):
        losses.check_inside_grid()


def test_tie_rule_picks_the_smallest_rate_within_one_standard_error():
    # 3e-3 and 1e-2 differ by 0.001, far less than the seeds' spread: they tie, the smaller wins
    table = {1e-3: 0.80, 3e-3: 0.900, 1e-2: 0.901, 3e-2: 0.7}
    sweep = sweep_learning_rate(lambda lr, seed: table[lr] + (0.01 if seed else -0.01),
                                [1e-3, 3e-3, 1e-2, 3e-2], seeds=(0, 1), progress=False)
    assert sweep.top_index == 2 and sweep.margin == pytest.approx(0.01)
    assert sweep.best_lr == 3e-3 and sweep.best_score == pytest.approx(0.9)
    rows = sweep.table().splitlines()
    assert rows[2].endswith(" *") and rows[3].endswith(" =") and not rows[1].endswith(("*", "="))
    # with no spread (identical seeds) the better mean wins however small the difference ...
    exact = sweep_learning_rate(lambda lr, seed: table[lr], [1e-3, 3e-3, 1e-2, 3e-2], seeds=(0, 1),
                                progress=False)
    assert exact.best_lr == 1e-2 and exact.margin == 0.0
    # ... unless a tolerance says such differences are noise
    tol = sweep_learning_rate(lambda lr, seed: table[lr], [1e-3, 3e-3, 1e-2, 3e-2], tolerance=0.005,
                              progress=False)
    assert tol.best_lr == 3e-3 and tol.margin == 0.005
    # lower is better: within the margin means at most best + margin
    loss = sweep_learning_rate(lambda lr, seed: {1e-3: 2.0, 3e-3: 1.504, 1e-2: 1.5}[lr], [1e-3, 3e-3, 1e-2],
                               higher_is_better=False, tolerance=0.01, progress=False)
    assert loss.best_lr == 3e-3 and loss.top_index == 2


def test_sweep_table_prints_a_dash_for_the_std_of_one_seed():
    one = sweep_learning_rate(lambda lr, seed: lr, [1e-3, 3e-3, 1e-2], progress=False).table()
    assert "0.0000" not in one and all(row.split()[2] == "–" for row in one.splitlines()[1:])
    two = sweep_learning_rate(lambda lr, seed: lr + seed, [1e-3, 3e-3, 1e-2], seeds=(0, 1), progress=False)
    assert two.table().splitlines()[1].split()[2] == "0.7071"


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf"), "0.01", True])
def test_sweep_refuses_a_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance must be"):
        sweep_learning_rate(lambda lr, seed: 0.0, [1e-3, 1e-2, 1e-1], tolerance=tolerance, progress=False)


def test_sweep_says_so_when_every_rate_diverged():
    with pytest.raises(ValueError, match="every learning rate .* diverged"):
        sweep_learning_rate(lambda lr, seed: float("nan"), [1e-3, 1e-2, 1e-1], progress=False)


def test_sweep_learning_rate_treats_divergence_as_worst():
    sweep = sweep_learning_rate(lambda lr, seed: float("nan") if lr > 5e-3 else lr,
                                [1e-3, 3e-3, 1e-2], progress=False)
    assert sweep.best_lr == 3e-3
    # a diverged loss is the worst loss (+inf), not the best
    losses = sweep_learning_rate(lambda lr, seed: float("nan") if lr < 2e-3 else lr,
                                 [1e-3, 3e-3, 1e-2], higher_is_better=False, progress=False)
    assert losses.scores[0] == [float("inf")] and losses.best_lr == 3e-3


@pytest.mark.parametrize("lrs", [[1e-3, 1e-2], [1e-2, 1e-3, 1e-1], [0.0, 1e-3, 1e-2], [1e-3, 1e-3, 1e-2]])
def test_sweep_learning_rate_refuses_bad_grids(lrs):
    with pytest.raises(ValueError, match="lrs must be"):
        sweep_learning_rate(lambda lr, seed: 0.0, lrs, progress=False)
