"""Statistics of the length-method study: Pareto frontiers, interpolation along them, matched-accuracy token ratios
paired bootstrap intervals over prompts and seeds, and seed-level t and jackknife intervals. Pure numpy: arrays in,
numbers out.

Why two intervals: the bootstrap resamples seeds and prompts, but with ``S`` seeds it has only ``C(2S-1, S)`` distinct
seed resamples (10 for 3 seeds) and reads the spread of a handful of seeds as if it were the population's; a
seed-level interval with Student's quantile widens exactly when seeds are few and disagree, which is what an honest
one must do. The study's reports use the jackknife form (:func:`jackknife_interval`), which belongs to the statistic
they report (a ratio of pooled frontiers), not to the mean of per-seed ratios.

A *point* is ``(tokens, accuracy)`` of one (method, coefficient). A method's *frontier* is its Pareto-efficient
points (no other point of the method is both shorter and at least as accurate) sorted by tokens; between two
frontier points both coordinates are interpolated linearly. ``tokens_at_accuracy`` answers "how many tokens does this
method need to reach accuracy ``a``" and ``accuracy_at_tokens`` "how accurate can it be within ``n`` tokens".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "pareto_frontier",
    "tokens_at_accuracy",
    "accuracy_at_tokens",
    "percentile_interval",
    "paired_bootstrap",
    "student_t_quantile",
    "t_interval",
]


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto-efficient ``(tokens, accuracy)`` points, sorted by tokens (accuracy then rises strictly).

    A point is kept when no other point has at most its tokens and strictly more accuracy, or strictly fewer tokens
    and at least its accuracy. NaN points are ignored. ``[(10, .5), (20, .9), (15, .4), (30, .85)]`` →
    ``[(10, .5), (20, .9)]``.
    """
    clean = sorted((float(t), float(a)) for t, a in points if np.isfinite(t) and np.isfinite(a))
    frontier: list[tuple[float, float]] = []
    for tokens, accuracy in clean:  # ascending tokens: keep a point only if it beats every shorter one
        if frontier and accuracy <= frontier[-1][1]:
            continue
        if frontier and tokens == frontier[-1][0]:
            frontier[-1] = (tokens, accuracy)
            continue
        frontier.append((tokens, accuracy))
    return frontier


def tokens_at_accuracy(frontier: Sequence[tuple[float, float]], accuracy: float) -> float:
    """Tokens the frontier needs to reach ``accuracy``: linear interpolation between the two frontier points that
    bracket it; the shortest point's tokens when even that point is at least as accurate; NaN when no point reaches
    it (the method cannot be that accurate)."""
    if not frontier:
        return float("nan")
    if accuracy <= frontier[0][1]:
        return float(frontier[0][0])
    for (t0, a0), (t1, a1) in zip(frontier, frontier[1:], strict=False):
        if a0 <= accuracy <= a1:
            return float(t0 + (t1 - t0) * (accuracy - a0) / (a1 - a0))
    return float("nan")


def accuracy_at_tokens(frontier: Sequence[tuple[float, float]], tokens: float) -> float:
    """Accuracy the frontier reaches within ``tokens``: linear interpolation between the bracketing frontier points;
    the most accurate point's accuracy when it is already within budget; NaN when even the shortest point is longer."""
    if not frontier or tokens < frontier[0][0]:
        return float("nan")
    if tokens >= frontier[-1][0]:
        return float(frontier[-1][1])
    for (t0, a0), (t1, a1) in zip(frontier, frontier[1:], strict=False):
        if t0 <= tokens <= t1:
            return float(a0 + (a1 - a0) * (tokens - t0) / (t1 - t0))
    return float("nan")


def percentile_interval(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval ``(lo, hi)`` of ``samples``, NaNs dropped (NaN, NaN when all are NaN)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    values = np.asarray(samples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap(
    metrics: Mapping[str, np.ndarray],
    statistic: Callable[[Mapping[str, np.ndarray]], Mapping[str, float]],
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Bootstrap a statistic of per-(configuration, seed, prompt) metrics, resampling seeds and prompts jointly.

    Args:
        metrics: name → array of shape ``(C, S, P)`` (configurations × seeds × prompts), e.g. ``correct`` and
            ``tokens``; every configuration is evaluated on the same prompts with the same seeds, so one draw of seed
            and prompt indices is applied to all of them (a paired bootstrap: differences between configurations keep
            their correlation).
        statistic: takes the resampled ``(C,)`` means of every metric and returns named numbers.
        samples: number of bootstrap replicates.
        seed: seed of the resampling.

    Returns:
        name → ``(samples,)`` array of the statistic over replicates (take :func:`percentile_interval` of each).
    """
    if not metrics:
        raise ValueError("no metrics to bootstrap")
    shapes = {name: array.shape for name, array in metrics.items()}
    first = next(iter(shapes.values()))
    if any(shape != first for shape in shapes.values()) or len(first) != 3:
        raise ValueError(f"every metric must be one (configurations, seeds, prompts) array; got shapes {shapes}")
    _, seeds, prompts = first
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    for _ in range(samples):
        seed_draw = rng.integers(0, seeds, size=seeds)
        prompt_draw = rng.integers(0, prompts, size=prompts)
        means = {name: np.nanmean(array[:, seed_draw][:, :, prompt_draw], axis=(1, 2))
                 for name, array in metrics.items()}
        for name, value in statistic(means).items():
            out.setdefault(name, []).append(float(value))
    return {name: np.asarray(values) for name, values in out.items()}


def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (``t_{0.975, 4}`` = 2.776).

    Bisection on the CDF, itself a Simpson integral of the density ``Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) (1 + x²/ν)^(-(ν+1)/2)``
    (numpy only; accurate to about 1e-6 for the quantiles intervals use).
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must lie in (0, 1), got {probability!r}")
    if df < 1:
        raise ValueError(f"df must be ≥ 1, got {df!r}")
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, df)
    nu = float(df)
    log_norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)

    def upper_cdf(x: float) -> float:  # P(0 < T < x)
        grid = np.linspace(0.0, x, 4001)
        density = np.exp(log_norm - (nu + 1) / 2 * np.log1p(grid ** 2 / nu))
        h = grid[1] - grid[0]
        return float(h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum()))

    target = probability - 0.5
    low, high = 0.0, 1.0
    while upper_cdf(high) < target:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if upper_cdf(middle) < target else (low, middle)
    return (low + high) / 2


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """``mean ± t_{(1+level)/2, n-1} · sd / √n`` over the finite ``values`` (one per seed): the interval of the mean
    of a statistic whose only honest replication unit is the seed. (NaN, NaN) with fewer than two finite values."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return float("nan"), float("nan")
    half = student_t_quantile((1.0 + level) / 2.0, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size)
    return float(finite.mean() - half), float(finite.mean() + half)


def jackknife_interval(point: float, leave_one_out: Sequence[float] | np.ndarray, level: float = 0.95,
                       log_scale: bool = False) -> tuple[float, float]:
    """``θ̂ ± t_{(1+level)/2, n-1} · SE_jack`` with ``SE_jack² = (n-1)/n · Σ_i (θ̂_(i) − θ̄_(·))²``: the seed-level
    interval of the statistic ``point`` itself, where ``leave_one_out[i]`` is that statistic recomputed without seed
    ``i``. A ratio of pooled means (a frontier's tokens at matched accuracy) is not the mean of the per-seed ratios,
    so a t-interval over those can exclude its own point; this one is centred on it and, for a plain mean with the
    same number of prompts in every seed, equals :func:`t_interval` of the per-seed means. ``log_scale`` builds it on
    ``log θ`` and maps it back (for ratios: positive and multiplicatively symmetric). The jackknife variance errs
    large in expectation (the Efron–Stein inequality), which is no coverage guarantee: a frontier interpolation is not
    smooth, and a seed that moves a point on or off a frontier widens it. (NaN, NaN) with fewer than two seeds, where
    the point or any leave-one-out value is undefined (a frontier that stops reaching the target without some seed:
    the spread is then unknown, not small), or where one is not positive on the log scale."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    values = np.asarray(leave_one_out, dtype=np.float64)
    if values.size < 2 or not math.isfinite(point) or not np.isfinite(values).all():
        return float("nan"), float("nan")
    if log_scale:
        if point <= 0 or (values <= 0).any():
            return float("nan"), float("nan")
        low, high = jackknife_interval(math.log(point), np.log(values), level)
        return math.exp(low), math.exp(high)
    n = values.size
    standard_error = math.sqrt((n - 1) / n * float(((values - values.mean()) ** 2).sum()))
    half = student_t_quantile((1.0 + level) / 2.0, n - 1) * standard_error
    return float(point - half), float(point + half)
