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
