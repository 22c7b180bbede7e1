"""Sequence-level length baselines as TRL reward functions."""

import pytest

from lenvm_rl.rewards import KimiLengthReward, LinearLengthPenalty, TargetLengthReward, TokenBudgetReward


def correct_if_says_yes(completions, **kwargs):
    return [1.0 if "yes" in c else 0.0 for c in completions]


IDS = [[1] * 2, [1] * 6, [1] * 10, [1] * 4]
PROMPTS = ["p", "p", "p", "q"]
COMPLETIONS = ["yes", "yes", "no", "yes"]


def test_linear_penalty():
    assert LinearLengthPenalty(coef=0.5, scale=10)(PROMPTS, COMPLETIONS, IDS) == [-0.1, -0.3, -0.5, -0.2]
    with pytest.raises(ValueError, match="coef"):
        LinearLengthPenalty(coef=-1)


def test_kimi_group_reward():
    rewards = KimiLengthReward(correct_if_says_yes)(PROMPTS, COMPLETIONS, IDS)
    # group p: lengths 2, 6, 10 → λ = 0.5, 0, -0.5; the wrong one keeps only min(0, λ); group q: one length → 0
    assert rewards == [0.5, 0.0, -0.5, 0.0]
    wrong_short = KimiLengthReward(correct_if_says_yes)(["p", "p"], ["no", "yes"], [[1], [1, 1, 1]])
    assert wrong_short == [0.0, -0.5]  # being short never pays a wrong answer


def test_target_length_reward_fixed_and_per_prompt():
    assert TargetLengthReward(coef=1.0, target_length=4)(PROMPTS, COMPLETIONS, IDS) == [-2.0, -2.0, -6.0, 0.0]
    per_prompt = TargetLengthReward(coef=0.5, target_column="budget")
    assert per_prompt(PROMPTS, COMPLETIONS, IDS, budget=[2, 2, 2, 2]) == [0.0, -2.0, -4.0, -1.0]
    with pytest.raises(ValueError, match="exactly one"):
        TargetLengthReward(target_length=3, target_column="x")
    with pytest.raises(ValueError, match="budget"):
        per_prompt(PROMPTS, COMPLETIONS, IDS)


def test_token_budget_zeroes_past_the_budget():
    assert TokenBudgetReward(correct_if_says_yes, budget=5)(PROMPTS, COMPLETIONS, IDS) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="budget"):
        TokenBudgetReward(correct_if_says_yes, budget=0)


def test_names_for_trl_logging():
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(LinearLengthPenalty()) == "linear_length_penalty"
    assert get_callable_name(KimiLengthReward(correct_if_says_yes)) == "kimi_length_reward"


def test_self_normalized_length_penalty_by_hand():
    """Arora & Zanette: among a prompt's correct completions (lengths 3 and 9: mean 6, std 3) the z-scores are ∓1;
    the wrong one earns 0 however short; a prompt with one correct completion has no length preference (z = 0)."""
    import math

    from lenvm_rl.rewards import SelfNormalizedLengthPenalty

    def correct(completions, **kwargs):
        return [1.0, 1.0, 0.0, 1.0]

    penalty = SelfNormalizedLengthPenalty(correct, coef=0.4)
    rewards = penalty(prompts=["a", "a", "a", "b"], completions=["x"] * 4, completion_ids=[[1] * 3, [1] * 9, [1],
                                                                                          [1] * 5])
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert rewards == pytest.approx([-0.4 * sigmoid(-1), -0.4 * sigmoid(1), 0.0, -0.4 * sigmoid(0)])
    with pytest.raises(ValueError, match="coef"):
        SelfNormalizedLengthPenalty(correct, coef=-1)
    with pytest.raises(ValueError, match="correctness"):
        SelfNormalizedLengthPenalty("not a function")
