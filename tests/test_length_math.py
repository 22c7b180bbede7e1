"""Property tests pinning the invariants of the length math (docs/method.md)."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lenvm_rl import (
    choose_gamma,
    discounted_cumsum,
    length_advantages,
    length_returns,
    length_td_residuals,
    length_to_value,
    masked_mean,
    masked_whiten,
    potential_shaping,
    value_to_length,
)

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")

gammas = st.floats(min_value=0.5, max_value=0.9995, allow_nan=False)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def batches(draw, min_length=0):
    """A batch: lengths L_b ≤ T, a right-padded mask, values in (-1, 0) of width T+1, terminated flags."""
    width = draw(st.integers(min_value=1, max_value=12))
    batch = draw(st.integers(min_value=1, max_value=4))
    lengths = draw(st.lists(st.integers(min_value=min_length, max_value=width), min_size=batch, max_size=batch))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(torch.int64)
    values = -torch.rand(batch, width + 1, generator=generator, dtype=torch.float64) * 0.999 - 0.0005
    terminated = torch.tensor(draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
    return mask, values, terminated, torch.tensor(lengths)


def reference_returns(length, gamma):
    return [-(1 - gamma ** (length - t)) for t in range(length)]


# ---------------------------------------------------------------- value <-> length


@given(st.integers(min_value=0, max_value=5000), gammas, dtypes)
@example(943, 0.970703125, torch.float64)  # γ^L ≈ 7e-13: the inverse's conditioning, not its rounding, dominates
def test_value_length_round_trip(remaining, gamma, dtype):
    value = length_to_value(torch.tensor(float(remaining), dtype=dtype), gamma)
    assert -1.0 <= float(value) <= 0.0
    back = float(value_to_length(value, gamma))
    eps = torch.finfo(dtype).eps
    if float(value) > -1.0 + 1e3 * eps:
        # L = log(1 + v) / log γ: an error of eps in 1 + v moves L by eps / ((1 + v) |log γ|)
        conditioning = 8 * eps / ((1.0 + float(value)) * -math.log(gamma))
        assert back == pytest.approx(remaining, rel=1e-3 if dtype == torch.float32 else 1e-9,
                                     abs=1e-3 + conditioning)


@given(gammas, dtypes)
def test_value_to_length_is_finite_at_and_beyond_bounds(gamma, dtype):
    values = torch.tensor([-2.0, -1.0, -1.0 + 1e-12, -0.5, 0.0, 0.3], dtype=dtype)
    lengths = value_to_length(values, gamma)
    assert torch.isfinite(lengths).all()
    assert (lengths >= 0).all()
    assert float(lengths[4]) == 0.0 and float(lengths[5]) == 0.0
    assert float(lengths[0]) == float(lengths[1]) > float(lengths[3])


def test_length_to_value_known_numbers():
    assert float(length_to_value(torch.tensor(1.0), 0.9)) == pytest.approx(-0.1)
    assert float(length_to_value(torch.tensor(0), 0.9)) == 0.0
    assert float(value_to_length(torch.tensor(-0.19, dtype=torch.float64), 0.9)) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, float("nan"), "x"])
def test_gamma_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="gamma"):
        length_to_value(torch.tensor(3.0), bad)
    with pytest.raises(ValueError, match="gamma"):
        length_returns(torch.ones(1, 3), bad)


# ---------------------------------------------------------------- gamma selection


def test_choose_gamma_matches_the_paper_rule():
    lengths = torch.full((100,), 1533)
    gamma = choose_gamma(lengths)
    assert gamma == pytest.approx(0.01 ** (1 / 1533))
    assert round(gamma, 3) == 0.997
    assert float(length_to_value(torch.tensor(1533.0, dtype=torch.float64), gamma)) == pytest.approx(-0.99)


@given(st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=50),
       st.floats(0.5, 1.0), st.floats(0.5, 0.999))
def test_choose_gamma_maps_quantile_length_to_coverage(lengths, quantile, coverage):
    gamma = choose_gamma(lengths, quantile=quantile, coverage=coverage)
    assert 0 < gamma < 1
    length_q = float(torch.quantile(torch.tensor(lengths, dtype=torch.float64), quantile))
    assert float(length_to_value(torch.tensor(length_q, dtype=torch.float64), gamma)) == pytest.approx(-coverage)


@pytest.mark.parametrize(
    "lengths, kwargs, message",
    [([], {}, "at least one"), ([3, 0], {}, "positive"), ([3], {"quantile": 0}, "quantile"),
     ([3], {"coverage": 1.0}, "coverage")],
)
def test_choose_gamma_rejects_bad_input(lengths, kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_gamma(lengths, **kwargs)


# ---------------------------------------------------------------- returns


@given(batches(), gammas)
def test_returns_bounds_monotonicity_and_bellman(batch, gamma):
    mask, _, _, lengths = batch
    returns = length_returns(mask, gamma)
    assert returns.shape == mask.shape
    assert (returns[mask == 0] == 0).all()
    for row, length in enumerate(lengths.tolist()):
        got = returns[row, :length].double()
        assert ((got > -1) & (got < 0)).all()
        # further from the end means further from 0: strictly increasing in t
        assert (got[1:] > got[:-1]).all()
        torch.testing.assert_close(got, torch.tensor(reference_returns(length, gamma), dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)
        # Bellman: G_t = -(1-γ) + γ G_{t+1}, with G_L = 0
        following = torch.cat([got[1:], got.new_zeros(1)])[:length]
        torch.testing.assert_close(got, -(1 - gamma) + gamma * following, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- advantages


@given(batches(), gammas)
def test_lambda_one_equals_monte_carlo_minus_value_on_terminated_rows(batch, gamma):
    mask, values, _, lengths = batch
    terminated = torch.ones(mask.shape[0], dtype=torch.bool)
    advantages, returns = length_advantages(values, mask, gamma, lam=1.0, terminated=terminated)
    monte_carlo = length_returns(mask.double(), gamma)
    assert monte_carlo.dtype == torch.float64
    torch.testing.assert_close(advantages, (monte_carlo - values[:, :-1]) * mask, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(returns, monte_carlo, rtol=1e-9, atol=1e-9)


@given(batches(), gammas)
def test_lambda_zero_equals_one_step_residual(batch, gamma):
    mask, values, terminated, lengths = batch
    advantages, _ = length_advantages(values, mask, gamma, lam=0.0, terminated=terminated)
    for row, length in enumerate(lengths.tolist()):
        for t in range(length):
            if t == length - 1 and bool(terminated[row]):
                following = 0.0
            else:
                following = float(values[row, t + 1])
            delta = -(1 - gamma) + gamma * following - float(values[row, t])
            assert float(advantages[row, t]) == pytest.approx(delta, abs=1e-12)


@given(batches(), gammas, st.floats(0.0, 1.0))
def test_gae_recursion_and_truncated_bootstrap(batch, gamma, lam):
    mask, values, terminated, lengths = batch
    advantages, returns = length_advantages(values, mask, gamma, lam=lam, terminated=terminated)
    deltas = length_td_residuals(values, mask, gamma, terminated)
    for row, length in enumerate(lengths.tolist()):
        running = 0.0
        for t in reversed(range(length)):
            running = float(deltas[row, t]) + gamma * lam * running
            assert float(advantages[row, t]) == pytest.approx(running, abs=1e-10)
        if length and not bool(terminated[row]):
            # the last residual of a truncated row bootstraps from values[b, L_b]
            last = -(1 - gamma) + gamma * float(values[row, length]) - float(values[row, length - 1])
            assert float(deltas[row, length - 1]) == pytest.approx(last, abs=1e-12)
    torch.testing.assert_close(returns, (advantages + values[:, :-1]) * mask)


@given(batches(), gammas, st.floats(0.0, 1.0))
def test_masked_positions_are_exactly_zero(batch, gamma, lam):
    mask, values, terminated, _ = batch
    noisy = values.clone()
    advantages, returns = length_advantages(noisy, mask, gamma, lam, terminated)
    shaping = potential_shaping(noisy, mask, gamma, terminated)
    for tensor in (advantages, returns, shaping, length_returns(mask, gamma)):
        assert (tensor[mask == 0] == 0).all()


@given(batches(), gammas)
def test_terminal_column_is_ignored_for_terminated_rows(batch, gamma):
    mask, values, _, lengths = batch
    terminated = torch.ones(mask.shape[0], dtype=torch.bool)
    poked = values.clone()
    poked[torch.arange(mask.shape[0]), lengths] = -0.77
    a1, _ = length_advantages(values, mask, gamma, 0.9, terminated)
    a2, _ = length_advantages(poked, mask, gamma, 0.9, terminated)
    torch.testing.assert_close(a1, a2)


def test_advantage_sign_prefers_the_shorter_completion():
    gamma = 0.9
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    values = torch.full((2, 7), float(length_to_value(torch.tensor(4.0), gamma)))
    advantages, _ = length_advantages(values, mask, gamma, lam=1.0)
    assert advantages[0, 0] > 0 > advantages[1, 0]


# ---------------------------------------------------------------- shaping


@given(batches(min_length=1), gammas)
def test_shaping_telescopes_to_minus_initial_potential(batch, gamma):
    mask, values, _, lengths = batch
    terminated = torch.ones(mask.shape[0], dtype=torch.bool)
    shaping = potential_shaping(values, mask, gamma, terminated)
    discounts = gamma ** torch.arange(mask.shape[1], dtype=torch.float64)
    total = (shaping * discounts).sum(dim=1)
    torch.testing.assert_close(total, -values[:, 0], rtol=1e-9, atol=1e-9)


@given(batches(min_length=1), gammas)
def test_shaping_on_truncated_rows_keeps_the_bootstrap(batch, gamma):
    mask, values, _, lengths = batch
    terminated = torch.zeros(mask.shape[0], dtype=torch.bool)
    shaping = potential_shaping(values, mask, gamma, terminated)
    discounts = gamma ** torch.arange(mask.shape[1], dtype=torch.float64)
    total = (shaping * discounts).sum(dim=1)
    end = values[torch.arange(mask.shape[0]), lengths]
    torch.testing.assert_close(total, gamma ** lengths.double() * end - values[:, 0], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- helpers and float32


@given(batches(min_length=1))
def test_float32_and_float64_agree(batch):
    mask, values, terminated, _ = batch
    a64, r64 = length_advantages(values, mask, 0.99, 0.95, terminated)
    a32, r32 = length_advantages(values.float(), mask, 0.99, 0.95, terminated)
    assert a32.dtype == torch.float32
    torch.testing.assert_close(a32.double(), a64, rtol=1e-4, atol=1e-5)


def test_discounted_cumsum_hand_example():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = discounted_cumsum(rewards, mask, 0.5)
    torch.testing.assert_close(out, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]))


def test_masked_mean_and_whiten():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(masked_mean(x, mask)) == pytest.approx(3.0)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, 5.0]))
    white = masked_whiten(x, mask)
    assert float(masked_mean(white, mask)) == pytest.approx(0.0, abs=1e-6)
    assert (white[mask == 0] == 0).all()
    assert float(masked_mean(x, torch.zeros_like(mask))) == 0.0


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.tensor([[1, 0, 1]]), "prefix"),
        (torch.tensor([[1, 2, 0]]), "only 0 and 1"),
        (torch.tensor([1, 1, 0]), "2-D"),
    ],
)
def test_bad_masks_are_rejected(mask, message):
    with pytest.raises(ValueError, match=message):
        length_returns(mask, 0.9)


def test_values_of_the_wrong_width_are_rejected():
    mask = torch.ones(2, 4)
    with pytest.raises(ValueError, match=r"\(B, T\+1\) = \(2, 5\)"):
        length_advantages(torch.zeros(2, 4), mask, 0.9)
    with pytest.raises(ValueError, match="lam"):
        length_advantages(torch.zeros(2, 5), mask, 0.9, lam=1.5)
    with pytest.raises(ValueError, match="terminated"):
        potential_shaping(torch.zeros(2, 5), mask, 0.9, terminated=torch.ones(3, dtype=torch.bool))


def test_log_gamma_precision_for_gamma_close_to_one():
    gamma = 0.9998
    value = length_to_value(torch.tensor(1.0, dtype=torch.float32), gamma)
    assert float(value) == pytest.approx(-(1 - gamma), rel=1e-4)
    assert float(value_to_length(value, gamma)) == pytest.approx(1.0, rel=1e-3)
    assert math.isfinite(float(value_to_length(torch.tensor(-1.0), gamma)))
