"""Paired differences over seeds, their 95 % t intervals, and the verdict an interval gives.

Two methods run with the same seeds on the same fixed split, so each seed gives one difference and
the seed-to-seed variation they share cancels. The interval is Student's t interval of the mean
difference; "beats" when it lies above 0, "loses" when below, "ties" when it contains 0.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

CONFIDENCE = 0.95
VERDICTS = ("beats", "ties", "loses", "undecided")  # undecided: fewer than two paired seeds (a headline: see summary.decided)


def describe(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def t_interval(diffs: list[float]) -> tuple[float, float] | None:
    """The CONFIDENCE interval of the mean of `diffs`; None below two values."""
    if len(diffs) < 2:
        return None
    mean, sem = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    if sem == 0:
        return mean, mean
    low, high = scipy_stats.t.interval(CONFIDENCE, len(diffs) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def verdict(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "undecided"
    low, high = interval
    return "beats" if low > 0 else "loses" if high < 0 else "ties"


def paired(ours: dict[int, float], theirs: dict[int, float]) -> dict:
    """`ours` − `theirs` on the seeds both have: the mean difference, its interval and the verdict."""
    seeds = sorted(ours.keys() & theirs.keys())
    diffs = [ours[seed] - theirs[seed] for seed in seeds]
    interval = t_interval(diffs)
    return {"diff": statistics.fmean(diffs) if diffs else None, "low": interval and interval[0], "high": interval and interval[1],
            "seeds": seeds, "diffs": diffs, "verdict": verdict(interval)}
