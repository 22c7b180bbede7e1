"""Evaluation math: the value-space ground truth and the MRE bookkeeping."""

import math

import pytest
import torch

from lenvm_rl.evaluation import CriticEvaluation, value_space_length


def test_value_space_length_of_equal_lengths_is_that_length():
    assert float(value_space_length(torch.tensor([7, 7, 7]), 0.97)) == pytest.approx(7.0)


def test_value_space_length_sits_below_the_mean_raw_length():
    gamma = 0.9
    lengths = torch.tensor([1, 3])
    expected = math.log((gamma + gamma**3) / 2) / math.log(gamma)
    got = float(value_space_length(lengths, gamma))
    assert got == pytest.approx(expected)
    assert got < 2.0  # Jensen: inverting a mean value under-estimates the mean raw length


def test_scalars_compute_mre_and_the_constant_baseline():
    evaluation = CriticEvaluation(gamma=0.9, prompt_predicted=[10.0, 22.0], prompt_truth_value_space=[10.0, 20.0],
                                  prompt_truth_mean_raw=[12.0, 20.0], constant_prediction=15.0)
    evaluation.position_errors[0.0].extend([0.1, 0.3])
    scalars = evaluation.scalars()
    assert scalars["prompt_mre"] == pytest.approx((0 + 0.1) / 2)
    assert scalars["prompt_mre_naive"] == pytest.approx((2 / 12 + 2 / 20) / 2)
    assert scalars["constant_mre"] == pytest.approx((5 / 10 + 5 / 20) / 2)
    assert scalars["mre_vs_constant"] == pytest.approx(0.05 / 0.375)
    assert scalars["rel_err_at_0pct"] == pytest.approx(0.2)
    assert math.isnan(scalars["rel_err_at_50pct"])
