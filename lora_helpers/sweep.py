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

__all__ = ["LRSweep", "sweep_learning_rate"]


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
    lrs = [float(lr) for lr in lrs]
    if len(lrs) < 3 or any(not (math.isfinite(lr) and lr > 0) for lr in lrs) \
            or any(b <= a for a, b in zip(lrs, lrs[1:])):
        raise ValueError(f"lrs must be at least 3 increasing positive numbers, got {lrs}; "
                         f"e.g. [1e-3, 3e-3, 1e-2]")
    seeds = [check_int(seed, "seed", low=0) for seed in seeds]
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed, e.g. seeds=(0,)")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}; "
                         f"e.g. tolerance=0.005 (or 0 for the standard error alone)")
    scores = []
    with tqdm(total=len(lrs) * len(seeds), desc=desc, disable=not show_progress(progress), leave=False) as bar:
        for lr in lrs:
            row = []
            for seed in seeds:
                score = float(run(lr, seed))
                if not math.isfinite(score):
                    score = -math.inf if higher_is_better else math.inf  # diverged: worst
                row.append(score)
                bar.update()
            scores.append(row)
    if not any(math.isfinite(statistics.fmean(row)) for row in scores):
        raise ValueError(f"every learning rate of {lrs} diverged (a non-finite score) for some "
                         f"seed: no rate can be picked; check that run(lr, seed) returns the "
                         f"validation score, then try a grid of smaller rates")
    return LRSweep(lrs, seeds, scores, higher_is_better, float(tolerance))
