"""Property tests for the scale-free length advantage (docs/method.md, "The scale-free length term")."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lenvm_rl import (
    length_to_value,
    normalize_length_credits,
    relative_length_advantages,
    relative_length_credits,
    value_to_length,
)

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")


def oracle_values(remaining: list[list[float]], width: int, gamma: float) -> torch.Tensor:
    """(B, T+1) values of a critic that knows each state's expected remaining length exactly."""
    values = torch.zeros(len(remaining), width + 1, dtype=torch.float64)
    for row, lengths in enumerate(remaining):
        values[row, : len(lengths)] = length_to_value(torch.tensor(lengths, dtype=torch.float64), gamma)
    return values


def mask_of(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


@st.composite
def terminated_batches(draw):
    width = draw(st.integers(min_value=2, max_value=14))
    groups = draw(st.integers(min_value=1, max_value=3))
    size = draw(st.integers(min_value=1, max_value=4))
    lengths = draw(st.lists(st.integers(min_value=1, max_value=width), min_size=groups * size, max_size=groups * size))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    values = -torch.rand(len(lengths), width + 1, generator=generator, dtype=torch.float64) * 0.98 - 0.01
    passed = torch.tensor(draw(st.lists(st.booleans(), min_size=len(lengths), max_size=len(lengths))))
    return mask_of(lengths, width), values, torch.tensor(lengths), size, passed


@given(terminated_batches(), st.floats(min_value=0.6, max_value=0.999))
def test_credits_of_a_completion_sum_to_its_sequence_length_outcome(batch, gamma):
    mask, values, lengths, _, _ = batch
    credits = relative_length_credits(values, mask, gamma)
    expected_length = value_to_length(values[:, 0], gamma)
    # 1 - L / l(s_0), with l(s_0) clamped to one token in the denominator
    assert torch.allclose(credits.sum(dim=1), (expected_length - lengths) / expected_length.clamp(min=1.0),
                          atol=1e-9)
    assert bool((credits[mask == 0] == 0).all())


@given(terminated_batches(), st.floats(min_value=0.6, max_value=0.999), st.sampled_from(["batch", "group", "none"]),
       st.sampled_from(["token", "sequence"]))
def test_normalized_credits_sum_to_the_normalized_outcome_and_failed_rows_get_nothing(batch, gamma, scale,
                                                                                      placement):
    mask, values, _, size, passed = batch
    credits = relative_length_credits(values, mask, gamma)
    normalized = normalize_length_credits(credits, mask, size, passed, scale=scale, placement=placement)
    outcome = credits.sum(dim=1).view(-1, size)
    weight = passed.double().view(-1, size)
    mean = (outcome * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(min=1)
    centered = (outcome - mean).flatten()
    totals = normalized.sum(dim=1)
    assert bool((totals[~passed] == 0).all())
    if passed.any():
        ratio = totals[passed] / centered[passed]
        usable = centered[passed].abs() > 1e-6
        # one positive σ for every passing row in batch mode, 1 + eps with scale none
        if usable.any() and scale != "group":
            assert torch.allclose(ratio[usable], ratio[usable][0].expand(int(usable.sum())), rtol=1e-6)
            assert bool((ratio[usable] > 0).all())


@given(st.lists(st.floats(min_value=2.0, max_value=60.0), min_size=2, max_size=5), st.floats(0.8, 0.99),
       st.sampled_from([0.0, 1.0]))
def test_scaling_every_length_by_ten_leaves_the_advantages_unchanged(remaining_at_decisions, gamma, lam):
    """A completion made of segments: at each decision the critic's expected remaining length jumps. Stretch every
    segment ×10 (and γ → γ^(1/10)): the credit summed over each stretched token block is the original token's, and
    the λ=1 advantage at corresponding positions is the same."""
    rng = torch.Generator().manual_seed(len(remaining_at_decisions))
    length = 12
    expected = [float(length + (torch.rand(1, generator=rng).item() - 0.5) * 6)]
    for t in range(1, length):  # an expected remaining length that drifts around the truth
        expected.append(max(0.5, length - t + (torch.rand(1, generator=rng).item() - 0.5) * 4))
    group = [expected, [e * 1.1 for e in expected]]
    values = oracle_values(group, length, gamma)
    mask = mask_of([length, length], length)
    stretched_values = oracle_values([[10 * e for e in row for _ in range(10)] for row in group], 10 * length,
                                     gamma ** 0.1)
    # the 10 tokens that stand for one original token: states in between interpolate the remaining length
    for row, row_expected in enumerate(group):
        for t in range(length):
            start = row_expected[t] * 10
            end = row_expected[t + 1] * 10 if t + 1 < length else 0.0
            for k in range(10):
                remaining = start + (end - start) * k / 10
                stretched_values[row, 10 * t + k] = length_to_value(torch.tensor(remaining), gamma ** 0.1)
    stretched_mask = mask_of([10 * length, 10 * length], 10 * length)
    original = relative_length_advantages(values, mask, gamma, group_size=2, lam=lam, scale="none")
    stretched = relative_length_advantages(stretched_values, stretched_mask, gamma ** 0.1, group_size=2, lam=lam,
                                           scale="none")
    if lam == 1.0:
        assert torch.allclose(stretched[:, ::10], original, atol=1e-6)
    else:
        blocks = stretched.view(2, length, 10).sum(dim=2)
        assert torch.allclose(blocks, original, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.99, 0.9995])
def test_a_ten_percent_cut_earns_the_same_on_a_short_and_a_long_prompt(gamma):
    """Prompt A expects 100 tokens and one completion uses 90; prompt B expects 1,000 and one uses 900."""
    outcomes = []
    for expected, used in ((100, 90), (1000, 900)):
        remaining = [[float(expected - t * expected / used) for t in range(used)]]
        values = oracle_values(remaining, used, gamma)
        credits = relative_length_credits(values, mask_of([used], used), gamma)
        outcomes.append(float(credits.sum()))
    assert outcomes[0] == pytest.approx(0.1, abs=1e-6) and outcomes[1] == pytest.approx(0.1, abs=1e-6)


def test_value_space_saturation_does_not_hide_a_long_completions_saving():
    """At γ = 0.891 a length of 25 gives -0.944 and 40 gives -0.99: in value space cutting 40 → 25 is worth 0.046;
    in length space it is the same 37.5% as 16 → 10."""
    gamma = 0.891
    long_cut = relative_length_credits(oracle_values([[40.0] + [24.0 - t for t in range(24)]], 25, gamma),
                                       mask_of([25], 25), gamma)
    short_cut = relative_length_credits(oracle_values([[16.0] + [9.0 - t for t in range(9)]], 10, gamma),
                                        mask_of([10], 10), gamma)
    assert float(long_cut.sum()) == pytest.approx(1 - 25 / 40, abs=1e-3)
    assert float(short_cut.sum()) == pytest.approx(1 - 10 / 16, abs=1e-3)


def test_credit_lands_on_the_deciding_token():
    """Expected remaining length 20 until token 3, where the completion chooses to stop early (remaining 4)."""
    gamma = 0.95
    remaining = [20.0, 19.0, 18.0, 17.0, 3.0, 2.0, 1.0]
    values = oracle_values([remaining], 7, gamma)
    credits = relative_length_credits(values, mask_of([7], 7), gamma)
    assert torch.allclose(credits[0, :3], torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert float(credits[0, 3]) == pytest.approx((17 - 1 - 3) / 20, abs=1e-9)
    assert torch.allclose(credits[0, 4:], torch.zeros(3, dtype=torch.float64), atol=1e-9)


def test_truncated_rows_bootstrap_from_the_last_state():
    gamma = 0.9
    values = oracle_values([[10.0, 9.0, 8.0, 7.5]], 3, gamma)  # column 3: 7.5 tokens still expected after the cut
    credits = relative_length_credits(values, mask_of([3], 3), gamma, terminated=torch.tensor([False]))
    assert float(credits.sum()) == pytest.approx(1 - (3 + 7.5) / 10, abs=1e-6)


def test_failed_rows_get_the_least_favourable_outcome_with_worst():
    credits = torch.tensor([[0.3, 0.0], [0.1, 0.0], [0.5, 0.0], [-0.2, 0.0]], dtype=torch.float64)
    mask = torch.ones(4, 2, dtype=torch.long)
    passed = torch.tensor([True, True, False, False])
    normalized = normalize_length_credits(credits, mask, group_size=4, passed=passed, scale="none", failed="worst")
    totals = normalized.sum(dim=1)
    mean = 0.2  # of the passing rows 0.3 and 0.1
    assert totals[0] == pytest.approx(0.1) and totals[1] == pytest.approx(-0.1)
    # the short wrong answer (0.5) is treated as the worst passing one (0.1); the long wrong one keeps its -0.2
    assert totals[2] == pytest.approx(0.1 - mean)
    assert totals[3] == pytest.approx(-0.2 - mean)
    assert bool((totals[2:] <= 0).all())
    assert torch.allclose(normalized[2, 0], normalized[2, 1])  # spread evenly: failed rows earn no placement


def test_sequence_placement_broadcasts_the_outcome_where_token_placement_localizes_it():
    gamma = 0.95
    values = oracle_values([[20.0, 19.0, 5.0, 4.0, 3.0, 2.0, 1.0], [20.0, 19.0, 18.0, 17.0, 16.0, 15.0, 14.0]],
                           7, gamma)
    values[1, 7] = length_to_value(torch.tensor(13.0), gamma)
    mask = mask_of([7, 7], 7)
    terminated = torch.tensor([True, False])
    token = relative_length_advantages(values, mask, gamma, 2, lam=1.0, terminated=terminated, placement="token")
    sequence = relative_length_advantages(values, mask, gamma, 2, lam=0.0, terminated=terminated,
                                          placement="sequence")
    # λ = 1: the first token's advantage is the whole outcome, which the sequence placement gives every token
    assert torch.allclose(token[:, 0], sequence[:, 0])
    assert torch.allclose(sequence[0], sequence[0, :1].expand(7))
    lam0 = relative_length_advantages(values, mask, gamma, 2, lam=0.0, terminated=terminated, placement="token")
    assert float(lam0[0, 1]) > 10 * abs(float(lam0[0, 3]))  # the deciding token carries the credit


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "row"}, "scale"), ({"placement": "prompt"}, "placement"), ({"failed": "all"}, "failed"),
    ({"group_size": 3}, "groups of group_size=3"),
])
def test_bad_arguments_are_named(kwargs, message):
    credits = torch.zeros(4, 2)
    arguments = {"group_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        normalize_length_credits(credits, torch.ones(4, 2), **arguments)


def test_scale_batch_keeps_tiny_differences_tiny_where_group_scale_inflates_them():
    """One group differs by 1% of its length, another by 50%: group scaling makes both full-size."""
    credits = torch.tensor([[0.005], [-0.005], [0.25], [-0.25]], dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.long)
    by_group = normalize_length_credits(credits, mask, 2, scale="group", min_scale=1e-6).flatten().tolist()
    by_batch = normalize_length_credits(credits, mask, 2, scale="batch").flatten().tolist()
    assert by_group[0] == pytest.approx(by_group[2], rel=1e-3)
    assert by_batch[0] < by_batch[2] / 40
    assert math.isclose(by_batch[2], -by_batch[3])


def test_the_scale_floor_keeps_per_token_credits_bounded_when_outcomes_do_not_vary():
    """One passing completion: its centered outcome is 0, but its per-token credits are not; dividing them by the
    near-zero batch std blew them up (seen as length/advantage/std in the thousands)."""
    credits = torch.tensor([[0.6, -0.6, 0.0], [0.3, 0.2, 0.1]], dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.long)
    passed = torch.tensor([True, False])
    normalized = normalize_length_credits(credits, mask, group_size=2, passed=passed, scale="batch")
    assert float(normalized.abs().max()) == pytest.approx(0.6 / 0.1)
    assert float(normalized[0].sum()) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="min_scale must be positive"):
        normalize_length_credits(credits, mask, group_size=2, min_scale=0.0)
