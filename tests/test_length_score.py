"""LIFEBench length deviation and length score (k1 = 5, k2 = 2) for equal_to, at_most and at_least."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lenvm_rl.decoding.length_score import (
    CONSTRAINT_TYPES,
    check_constraint,
    length_deviation,
    length_score,
    summarize_length_control,
)


def test_deviation_is_relative_to_the_target():
    torch.testing.assert_close(length_deviation([12, 8, 10], 10), torch.tensor([0.2, -0.2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(length_deviation([30, 30], [10, 60]), torch.tensor([2.0, -0.5], dtype=torch.float64))


@pytest.mark.parametrize(
    ("constraint", "length", "expected"),
    [
        ("equal_to", 100, 100.0),
        ("equal_to", 90, 100 * math.exp(-5 * 0.1)),  # too short: k1 = 5
        ("equal_to", 110, 100 * math.exp(-2 * 0.1)),  # too long: k2 = 2
        ("at_most", 50, 100.0),
        ("at_most", 100, 100.0),
        ("at_most", 150, 100 * math.exp(-2 * 0.5)),
        ("at_least", 300, 100.0),
        ("at_least", 100, 100.0),
        ("at_least", 80, 100 * math.exp(-5 * 0.2)),
    ],
)
def test_length_score_matches_lifebench(constraint, length, expected):
    assert float(length_score(length, 100, constraint)) == pytest.approx(expected)


def test_falling_short_costs_more_than_overshooting():
    short, long = length_score([80, 120], 100, "equal_to").tolist()
    assert short < long


def test_lifebench_spellings_are_accepted():
    assert check_constraint("Equal To") == "equal_to"
    assert check_constraint("at-most") == "at_most"
    assert check_constraint(" AT_LEAST ") == "at_least"
    assert set(CONSTRAINT_TYPES) == {"equal_to", "at_most", "at_least"}


def test_bad_inputs_raise_errors_naming_the_problem():
    with pytest.raises(ValueError, match="unknown length constraint 'roughly'"):
        length_score(10, 10, "roughly")
    with pytest.raises(ValueError, match="targets must be positive"):
        length_score(10, 0, "equal_to")
    with pytest.raises(ValueError, match="lengths must be non-negative"):
        length_deviation(-1, 5)
    with pytest.raises(ValueError, match="k1 and k2 must be positive"):
        length_score(10, 10, "equal_to", k1=0)
    with pytest.raises(ValueError, match="at least one output"):
        summarize_length_control([], 10, "equal_to")


def test_summary_reports_deviation_in_percent_and_mean_score():
    summary = summarize_length_control([8, 10, 12], 10, "at_most")
    assert summary["n"] == 3 and summary["mean_length"] == pytest.approx(10.0)
    assert summary["mean_abs_deviation_pct"] == pytest.approx(40 / 3)
    assert summary["mean_deviation_pct"] == pytest.approx(0.0)
    assert summary["mean_score"] == pytest.approx((100 + 100 + 100 * math.exp(-0.4)) / 3)
    assert summary["satisfied"] == pytest.approx(2 / 3)


@given(
    length=st.integers(min_value=0, max_value=5000),
    target=st.integers(min_value=1, max_value=5000),
    constraint=st.sampled_from(CONSTRAINT_TYPES),
)
def test_score_is_bounded_and_perfect_exactly_when_satisfied(length, target, constraint):
    score = float(length_score(length, target, constraint))
    assert 0.0 <= score <= 100.0
    satisfied = {"equal_to": length == target, "at_most": length <= target, "at_least": length >= target}[constraint]
    assert (score == 100.0) == satisfied
