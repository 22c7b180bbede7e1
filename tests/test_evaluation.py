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


def _calibration_lines(evaluation, monkeypatch, **kwargs):
    """The labelled lines of the calibration figure (the figure is captured instead of written)."""
    import lenvm_rl.evaluation as evaluation_module

    captured = {}
    monkeypatch.setattr(evaluation_module, "save_figure", lambda fig, path: captured.setdefault("fig", fig))
    evaluation_module.plot_calibration(evaluation, "unused.png", **kwargs)
    axes = captured["fig"].axes[0]
    return {line.get_label(): line for line in axes.get_lines()}, axes


def test_calibration_plot_draws_the_constant_baseline(monkeypatch):
    evaluation = CriticEvaluation(gamma=0.9, prompt_predicted=[10.0, 22.0], prompt_truth_value_space=[10.0, 20.0],
                                  prompt_truth_mean_raw=[12.0, 20.0], constant_prediction=15.0,
                                  calibration_predicted=[9.0, 4.0, 1.0], calibration_realized=[10.0, 5.0, 1.0])
    lines, axes = _calibration_lines(evaluation, monkeypatch)
    baseline = [line for label, line in lines.items() if label.startswith("constant baseline")]
    assert len(baseline) == 1, sorted(lines)
    assert list(baseline[0].get_ydata()) == [15.0, 15.0]
    assert "MRE 0.375" in baseline[0].get_label()  # (5/10 + 5/20) / 2
    assert any(label.startswith("critic at the prompt boundary") and "MRE 0.050" in label
               for label in [c.get_label() for c in axes.collections])
    # an explicit prediction wins; no prediction at all draws no baseline
    lines, _ = _calibration_lines(evaluation, monkeypatch, constant_prediction=12.0)
    assert [list(line.get_ydata()) for label, line in lines.items() if label.startswith("constant")] == [[12.0, 12.0]]
    evaluation.constant_prediction = None
    lines, _ = _calibration_lines(evaluation, monkeypatch)
    assert not [label for label in lines if label.startswith("constant")]
