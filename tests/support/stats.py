"""The arithmetic of the chaos and soak reports: percentiles and growth trends.

Pure functions, no I/O, so the numbers the reports print are tested on their own
(``tests/unit/test_load_stats.py``) rather than trusted.

A soak run asks "does memory (or the fd count) keep growing?". One start/end pair cannot
answer that: Python's allocator and the page cache make resident memory jump around.
A least-squares line through periodic samples can: its slope is the growth rate, and the
slope's standard error says how much of it the scatter of the samples alone would
explain. Growth is flagged only when it is both statistically clear (the slope is several
standard errors above zero) and large enough to matter over the run (a floor in absolute
units and relative to the level), so noise and one-off warm-up steps do not cry wolf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks
    (numpy's default). NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


@dataclass(frozen=True)
class Fit:
    """A least-squares line ``y = intercept + slope * t``."""

    slope: float
    intercept: float
    slope_stderr: float  # standard error of the slope; 0 for a perfect fit
    n: int


def linear_fit(times: Sequence[float], values: Sequence[float]) -> Fit:
    """Ordinary least squares of ``values`` against ``times`` (at least two distinct
    times)."""
    n = len(times)
    if n != len(values):
        raise ValueError("times and values differ in length")
    if n < 2:
        raise ValueError("a fit needs at least two samples")
    mean_t = sum(times) / n
    mean_y = sum(values) / n
    sxx = sum((t - mean_t) ** 2 for t in times)
    if sxx == 0:
        raise ValueError("a fit needs at least two distinct times")
    sxy = sum((t - mean_t) * (y - mean_y) for t, y in zip(times, values, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_t
    if n > 2:
        residual = sum((y - intercept - slope * t) ** 2 for t, y in zip(times, values, strict=True))
        stderr = math.sqrt(residual / (n - 2) / sxx)
    else:
        stderr = math.inf  # two points always fit exactly: no evidence of anything
    return Fit(slope, intercept, stderr, n)


@dataclass(frozen=True)
class Trend:
    """Whether a series grows beyond noise, and by how much.

    ``growth`` is what the fitted line gains over the sampled span (in the series'
    units); ``per_hour`` extrapolates the slope to an hour. ``significant``: the slope
    is more than ``sigmas`` standard errors above zero. ``flagged``: significant and a
    growth above ``threshold`` (the larger of the absolute and relative floors).
    """

    samples: int
    first: float
    last: float
    slope_per_s: float
    slope_stderr: float
    growth: float
    per_hour: float
    threshold: float
    significant: bool
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


def trend(
    times: Sequence[float],
    values: Sequence[float],
    *,
    min_growth: float,
    min_relative: float = 0.0,
    sigmas: float = 3.0,
) -> Trend:
    """Fit a line through the samples and judge its slope (see :class:`Trend`).

    ``min_growth`` is the absolute floor (for example bytes or file descriptors over the
    span), ``min_relative`` a fraction of the mean level; growth must exceed both.
    """
    if len(times) < 2 or len(set(times)) < 2:
        level = float(values[-1]) if values else math.nan
        first = float(values[0]) if values else math.nan
        return Trend(len(values), first, level, 0.0, math.inf, 0.0, 0.0, min_growth, False, False)
    fit = linear_fit(times, values)
    span = max(times) - min(times)
    growth = fit.slope * span
    mean_level = sum(values) / len(values)
    threshold = max(min_growth, min_relative * abs(mean_level))
    significant = fit.slope > 0 and fit.slope > sigmas * fit.slope_stderr
    return Trend(
        samples=fit.n,
        first=float(values[0]),
        last=float(values[-1]),
        slope_per_s=fit.slope,
        slope_stderr=fit.slope_stderr,
        growth=growth,
        per_hour=fit.slope * 3600,
        threshold=threshold,
        significant=significant,
        flagged=significant and growth > threshold,
    )


def _finite(value: Any) -> Any:
    """JSON has no infinity: report an unknown standard error as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
