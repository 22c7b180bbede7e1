"""The study's statistics against hand-computed values: frontiers, interpolation, intervals, the paired bootstrap
and the matched-accuracy ratio of the report."""

import math

import numpy as np
import pytest

from lenvm_rl import accuracy_at_tokens, paired_bootstrap, pareto_frontier, percentile_interval, tokens_at_accuracy
from lenvm_rl.study.report import StudyTable, _comparisons


def test_pareto_frontier_keeps_only_efficient_points_sorted_by_tokens():
    points = [(10, 0.5), (20, 0.9), (15, 0.4), (30, 0.85), (25, 0.9), (12, 0.6), (float("nan"), 1.0)]
    assert pareto_frontier(points) == [(10, 0.5), (12, 0.6), (20, 0.9)]
    assert pareto_frontier([]) == []
    assert pareto_frontier([(5, 0.7), (5, 0.8)]) == [(5, 0.8)]


def test_tokens_at_accuracy_interpolates_between_bracketing_points():
    frontier = [(10.0, 0.5), (20.0, 0.9)]
    assert tokens_at_accuracy(frontier, 0.7) == pytest.approx(15.0)  # halfway in accuracy → halfway in tokens
    assert tokens_at_accuracy(frontier, 0.9) == pytest.approx(20.0)
    assert tokens_at_accuracy(frontier, 0.3) == 10.0  # the shortest point is already that accurate
    assert math.isnan(tokens_at_accuracy(frontier, 0.95))  # unreachable
    assert math.isnan(tokens_at_accuracy([], 0.5))


def test_accuracy_at_tokens_interpolates_and_refuses_budgets_below_the_frontier():
    frontier = [(10.0, 0.5), (20.0, 0.9), (40.0, 0.95)]
    assert accuracy_at_tokens(frontier, 15.0) == pytest.approx(0.7)
    assert accuracy_at_tokens(frontier, 30.0) == pytest.approx(0.925)
    assert accuracy_at_tokens(frontier, 100.0) == 0.95
    assert math.isnan(accuracy_at_tokens(frontier, 9.0))


def test_percentile_interval():
    samples = np.arange(1, 101, dtype=float)  # 1 … 100
    low, high = percentile_interval(samples, level=0.9)
    assert low == pytest.approx(np.percentile(samples, 5)) and high == pytest.approx(np.percentile(samples, 95))
    assert all(math.isnan(v) for v in percentile_interval([float("nan")] * 3))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(samples, level=1.5)


def test_paired_bootstrap_resamples_prompts_and_seeds_jointly():
    # two configurations that differ by exactly 0.1 on every (seed, prompt): the paired difference has no spread,
    # while each configuration's own mean does
    rng = np.random.default_rng(0)
    base = rng.random((1, 3, 50))
    correct = np.concatenate([base, base + 0.1])
    boot = paired_bootstrap({"correct": correct, "tokens": correct * 10},
                            lambda m: {"diff": m["correct"][1] - m["correct"][0], "a": m["correct"][0]},
                            samples=200, seed=1)
    assert np.allclose(boot["diff"], 0.1)
    low, high = percentile_interval(boot["a"])
    assert low < base.mean() < high and high - low > 0.02
    with pytest.raises(ValueError, match="one \\(configurations, seeds, prompts\\) array"):
        paired_bootstrap({"correct": correct, "tokens": correct[:, :, :10]}, lambda m: {}, samples=2)


def _table(points: dict[tuple[str, float], tuple[float, float]], variants: dict[str, str]) -> StudyTable:
    results = [{"label": label, "coef": coef, "seed": 0, "eval": {"correct": [acc] * 4, "tokens": [tok] * 4}}
               for (label, coef), (tok, acc) in points.items()]
    return StudyTable(results, {label: {"method": method} for label, method in variants.items()})


def test_matched_accuracy_ratio_by_hand():
    """no length term: 40 tokens at 0.90. LenVM reaches 0.89 at 20 tokens (interpolated between (40, .9) and
    (16, .88)); linear reaches it at 30 tokens; kimi never gets below 36 tokens at 0.89."""
    points = {("none", 0.0): (40.0, 0.90),
              ("lenvm", 1.0): (16.0, 0.88), ("lenvm", 2.0): (8.0, 0.60),
              ("linear/batch", 0.1): (30.0, 0.89), ("linear/batch", 0.4): (10.0, 0.70),
              ("kimi/group", 0.1): (36.0, 0.89)}
    variants = {"none": "none", "lenvm": "lenvm", "linear/batch": "linear", "kimi/group": "kimi"}
    table = _table(points, variants)
    accuracy = np.array([points[c][1] for c in table.configs])
    tokens = np.array([points[c][0] for c in table.configs])
    out = _comparisons(table, "lenvm", None, ["linear/batch", "kimi/group"], [0.01, 0.05], accuracy, tokens)
    assert out["tokens@-0.01/lenvm"] == pytest.approx(16 + (40 - 16) * (0.89 - 0.88) / (0.90 - 0.88))  # 28
    assert out["tokens@-0.01/best_baseline"] == pytest.approx(30.0)
    assert out["ratio@-0.01"] == pytest.approx(28 / 30)
    # at 0.85 LenVM's frontier segment (8, .60) → (16, .88) gives 8 + 8 · 0.25 / 0.28
    assert out["tokens@-0.05/lenvm"] == pytest.approx(8 + 8 * 0.25 / 0.28)
    assert out["tokens@-0.05/linear/batch"] == pytest.approx(10 + 20 * 0.15 / 0.19)
    # within half the no-length-term tokens (20): LenVM's segment (16, .88) → (40, .90); linear's (10, .70) → (30, .89)
    assert out["accuracy@0.5/lenvm"] == pytest.approx(0.88 + 0.02 * 4 / 24)
    assert out["accuracy@0.5/best_baseline"] == pytest.approx(0.70 + 0.19 * 10 / 20)
    assert out["accuracy_gain@0.5"] == pytest.approx(0.88 + 0.02 * 4 / 24 - 0.795)
