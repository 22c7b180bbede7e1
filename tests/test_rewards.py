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


def test_cosine_scaled_correctness_follows_trls_schedule(monkeypatch):
    """The oracle is TRL's own cosine-scaled reward, with its math-verification correctness replaced by the same
    0/1 scores (TRL's needs math_verify and a solution column; ours wraps any correctness reward)."""
    import trl.rewards.accuracy_rewards as trl_accuracy
    from trl.rewards import get_cosine_scaled_reward

    from lenvm_rl.rewards import CosineScaledCorrectness

    ids = [[1] * n for n in (1, 5, 10, 20, 3, 9)]
    completions = ["yes", "yes", "yes", "yes", "no", "no"]
    scores = correct_if_says_yes(completions)
    monkeypatch.setattr(trl_accuracy, "accuracy_reward", lambda completions, solution, **kwargs: scores)
    for bounds in ({}, {"min_value_wrong": -2.0, "max_value_wrong": -0.2, "min_value_correct": 0.1,
                        "max_value_correct": 3.0}):
        expected = get_cosine_scaled_reward(max_len=10, **bounds)(completions=completions, solution=[""] * 6,
                                                                  completion_ids=ids)
        ours = CosineScaledCorrectness(correct_if_says_yes, max_len=10, **bounds)(["p"] * 6, completions, ids)
        assert ours == pytest.approx(expected)
    # shorter correct answers earn more, shorter wrong ones are penalized more, and past max_len nothing changes
    default = CosineScaledCorrectness(correct_if_says_yes, max_len=10)(["p"] * 6, completions, ids)
    assert default[0] > default[1] > default[2] == default[3] == pytest.approx(0.5)
    assert default[4] < default[5] < -0.5
    assert CosineScaledCorrectness(lambda **kwargs: [None], max_len=4)(["p"], ["x"], [[1]]) == [None]
    with pytest.raises(ValueError, match="max_len must be a positive number of tokens"):
        CosineScaledCorrectness(correct_if_says_yes, max_len=0)


def test_trls_length_rewards_as_study_methods():
    from trl.rewards.other_rewards import _SoftOverlongPunishment

    from lenvm_rl.rewards import CosineScaledCorrectness
    from lenvm_rl.study.methods import plan_run

    dapo = plan_run("dapo_overlong", 16, [correct_if_says_yes], 64, None)
    (term,) = dapo.reward_funcs[1:]
    assert isinstance(term, _SoftOverlongPunishment)  # TRL's own object, not a copy
    assert term(completion_ids=[[1] * 40, [1] * 56, [1] * 70]) == [0.0, -0.5, -1.0]
    cosine = plan_run("cosine", 32, [correct_if_says_yes], 64, None)
    assert isinstance(cosine.reward_funcs[0], CosineScaledCorrectness) and cosine.reward_funcs[0].max_len == 32
    assert len(cosine.reward_funcs) == 1  # it replaces the correctness reward
    for method, coef, message in (("dapo_overlong", 65, "at most max_completion_length"),
                                  ("dapo_overlong", 0.5, "whole number ≥ 1"), ("cosine", 7.5, "whole number ≥ 1")):
        with pytest.raises(ValueError, match=message):
            plan_run(method, coef, [correct_if_says_yes], 64, None)
