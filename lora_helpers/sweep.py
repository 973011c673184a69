"""A fair learning-rate sweep: one grid, every method, several seeds, validation data, a tie rule.

Every comparison in the notebooks tunes each method with ``sweep_learning_rate``: the same grid,
the same seeds, scored on a validation split (never the test set). The rate it picks follows a
stated **tie rule**, so that a difference smaller than the seeds' own noise does not decide it:

    the smallest learning rate whose mean score is within ``max(SE, tolerance)`` of the best
    mean, where SE is the standard error of the best rate's mean over seeds (std / sqrt(seeds)).

This is the "one-standard-error rule" of model selection (Hastie, Tibshirani and Friedman,
*The Elements of Statistical Learning*, 2nd ed., §7.10), with the smaller learning rate as the
simpler choice: it moves the weights less, so it forgets less (notebooks 05 and 07 measure that).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from ._checks import check_int
from .training import show_progress

__all__ = ["LRSweep", "sweep_learning_rate", "tune_learning_rate"]


@dataclass
class LRSweep:
    """What ``sweep_learning_rate`` measured, and the rate its tie rule picks.

    ``scores[i][j]`` is the validation score of ``lrs[i]`` with ``seeds[j]``; ``mean`` and ``std``
    are over seeds (``std`` is the sample standard deviation, 0.0 for one seed; a diverged run
    scores ``-inf`` when higher is better, ``+inf`` otherwise). ``tolerance`` is the smallest
    difference of mean scores that the tie rule counts as real (see the module docstring).
    """

    lrs: list[float]
    seeds: list[int]
    scores: list[list[float]]
    higher_is_better: bool = True
    tolerance: float = 0.0

    @property
    def mean(self) -> list[float]:
        return [statistics.fmean(row) for row in self.scores]

    @property
    def std(self) -> list[float]:
        return [statistics.stdev(row) if len(row) > 1 and all(map(math.isfinite, row)) else 0.0
                for row in self.scores]

    @property
    def top_index(self) -> int:
        """The index of the best mean score, ties broken toward the smaller rate."""
        sign = 1.0 if self.higher_is_better else -1.0
        return max(range(len(self.lrs)), key=lambda i: (sign * self.mean[i], -i))

    @property
    def margin(self) -> float:
        """How far below the best mean a rate may score and still tie: ``max(SE, tolerance)``."""
        return max(self.std[self.top_index] / math.sqrt(len(self.seeds)), self.tolerance)

    @property
    def best_index(self) -> int:
        """The tie rule's pick: the smallest rate whose mean is within ``margin`` of the best."""
        sign = 1.0 if self.higher_is_better else -1.0
        best = sign * self.mean[self.top_index]
        return min(i for i in range(len(self.lrs)) if sign * self.mean[i] >= best - self.margin)

    @property
    def best_lr(self) -> float:
        return self.lrs[self.best_index]

    @property
    def best_score(self) -> float:
        return self.mean[self.best_index]

    @property
    def inside_grid(self) -> bool:
        """True when the picked learning rate is neither the smallest nor the largest tried."""
        return 0 < self.best_index < len(self.lrs) - 1

    def check_inside_grid(self, name: str = "") -> float:
        """Return ``best_lr``, or raise ``ValueError`` if it sits on the edge of the grid."""
        if not self.inside_grid:
            side = "smallest" if self.best_index == 0 else "largest"
            raise ValueError(f"{name + ': ' if name else ''}the best learning rate {self.best_lr:g} "
                             f"is the {side} of the grid {self.lrs}: the optimum may lie outside "
                             f"it; extend the grid on that side")
        return self.best_lr

    def table(self, label: str = "") -> str:
        """The sweep as text: one line per rate; ``*`` marks the pick, ``=`` the rates that tie.

        With one seed there is no spread to show: the std column prints "–".
        """
        lines = [label, f"{'lr':>10}  {'mean':>8}  {'std':>7}"]
        sign = 1.0 if self.higher_is_better else -1.0
        best = sign * self.mean[self.top_index]
        for i, lr in enumerate(self.lrs):
            mark = " *" if i == self.best_index else " =" if sign * self.mean[i] >= best - self.margin else ""
            std = f"{self.std[i]:>7.4f}" if len(self.seeds) > 1 else f"{'–':>7}"
            lines.append(f"{lr:>10g}  {self.mean[i]:>8.4f}  {std}{mark}")
        return "\n".join(line for line in lines if line)


def _checked_grid(lrs: Sequence[float], what: str = "lrs") -> list[float]:
    lrs = [float(lr) for lr in lrs]
    if len(lrs) < 3 or any(not (math.isfinite(lr) and lr > 0) for lr in lrs) \
            or any(b <= a for a, b in zip(lrs, lrs[1:])):
        raise ValueError(f"{what} must be at least 3 increasing positive numbers, got {lrs}; "
                         f"e.g. [1e-3, 3e-3, 1e-2]")
    return lrs


def _checked_options(seeds: Sequence[int], tolerance: float) -> list[int]:
    seeds = [check_int(seed, "seed", low=0) for seed in seeds]
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed, e.g. seeds=(0,)")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}; "
                         f"e.g. tolerance=0.005 (or 0 for the standard error alone)")
    return seeds


def _score(run: Callable[[float, int], float], lr: float, seed: int, higher_is_better: bool) -> float:
    score = float(run(lr, seed))
    if not math.isfinite(score):
        score = -math.inf if higher_is_better else math.inf  # diverged: worst
    return score


def _result(lrs: list[float], seeds: list[int], scores: list[list[float]], higher_is_better: bool,
            tolerance: float) -> LRSweep:
    if not any(math.isfinite(statistics.fmean(row)) for row in scores):
        raise ValueError(f"every learning rate of {lrs} diverged (a non-finite score) for some "
                         f"seed: no rate can be picked; check that run(lr, seed) returns the "
                         f"validation score, then try a grid of smaller rates")
    return LRSweep(lrs, seeds, scores, higher_is_better, float(tolerance))


def sweep_learning_rate(run: Callable[[float, int], float], lrs: Sequence[float], *,
                        seeds: Sequence[int] = (0,), higher_is_better: bool = True,
                        tolerance: float = 0.0, progress: bool = True,
                        desc: str = "lr sweep") -> LRSweep:
    """Score every learning rate of a grid with every seed, on validation data.

    The same function serves every method of a comparison, so each is tuned the same way:
    ``run(lr, seed)`` builds a fresh model, trains it with ``lr`` and returns its score on the
    *validation* split (accuracy, or a loss with ``higher_is_better=False``). The test set plays
    no part. The picked rate (``best_lr``) follows the tie rule of this module's docstring; check
    that it lies inside the grid with ``LRSweep.check_inside_grid()``.

    Args:
        run: ``(lr, seed) -> validation score``.
        lrs: the grid, strictly increasing positive numbers (at least 3, so that a best value
            can lie inside it).
        seeds: the seeds to average over (two or more give the tie rule a standard error).
        higher_is_better: whether a larger score is better.
        tolerance: differences of mean score up to this count as ties (>= 0; in the score's
            units, e.g. 0.005 for accuracy on a few hundred images).
        progress: a ``tqdm.auto`` bar over the ``len(lrs) * len(seeds)`` runs.
    """
    lrs = _checked_grid(lrs)
    seeds = _checked_options(seeds, tolerance)
    scores = []
    with tqdm(total=len(lrs) * len(seeds), desc=desc, disable=not show_progress(progress), leave=False) as bar:
        for lr in lrs:
            row = []
            for seed in seeds:
                row.append(_score(run, lr, seed, higher_is_better))
                bar.update()
            scores.append(row)
    return _result(lrs, seeds, scores, higher_is_better, tolerance)


def tune_learning_rate(run: Callable[[float, int], float], ladder: Sequence[float],
                       start: Sequence[float], *, seeds: Sequence[int] = (0,),
                       higher_is_better: bool = True, tolerance: float = 0.0,
                       progress: bool = True, desc: str = "lr tuning") -> LRSweep:
    """``sweep_learning_rate`` on a window of ``ladder`` that widens until its pick is inside.

    Sweeps the rates ``start`` (three or more neighbouring rates of ``ladder``). While the tie
    rule's pick is the smallest rate of the window, the next smaller rate of the ladder joins it
    (the largest: the next larger one) and the pick is made again; every ``(lr, seed)`` is run
    once. It stops when the pick lies strictly inside the window, or when the ladder has no rate
    left on that side: then ``check_inside_grid()`` of the result raises, as for a fixed grid.

    Each rate added is one the fixed grid ``ladder`` would also have run, with the same seeds,
    so the scores are the same; a wide ladder costs nothing where it is not needed. The pick is
    the full sweep's whenever the scores rise to one peak and fall after it (tested).

    Args:
        run, seeds, higher_is_better, tolerance, progress, desc: as in ``sweep_learning_rate``.
        ladder: every rate the window may reach, strictly increasing (at least 3).
        start: the first window: consecutive rates of ``ladder``.

    Returns:
        The ``LRSweep`` of the final window (its ``lrs`` are the rates that were run).
    """
    ladder = _checked_grid(ladder, "ladder")
    start = _checked_grid(start, "start")
    seeds = _checked_options(seeds, tolerance)
    if not all(lr in ladder for lr in start):
        raise ValueError(f"start {start} holds rates that are not on the ladder {ladder}; "
                         f"pick three or more neighbouring rates of the ladder")
    lo, hi = ladder.index(start[0]), ladder.index(start[-1]) + 1
    if ladder[lo:hi] != start:
        raise ValueError(f"start {start} skips rates of the ladder {ladder}: the window must be "
                         f"neighbouring rates, e.g. {ladder[lo:lo + len(start)]}")
    scores: dict[float, list[float]] = {}
    with tqdm(total=len(start) * len(seeds), desc=desc, disable=not show_progress(progress),
              leave=False) as bar:
        while True:
            for lr in ladder[lo:hi]:
                if lr not in scores:
                    scores[lr] = []
                    for seed in seeds:
                        scores[lr].append(_score(run, lr, seed, higher_is_better))
                        bar.update()
            sweep = _result(ladder[lo:hi], seeds, [scores[lr] for lr in ladder[lo:hi]],
                            higher_is_better, tolerance)
            if sweep.inside_grid:
                return sweep
            if sweep.best_index == 0 and lo > 0:
                lo -= 1  # the pick is the smallest rate: one rate below joins
            elif sweep.best_index > 0 and hi < len(ladder):
                hi += 1  # the pick is the largest rate: one rate above joins
            else:
                return sweep  # the ladder ends there; check_inside_grid() says so
            bar.total += len(seeds)
            bar.refresh()
