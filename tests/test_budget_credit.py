"""The budget-overshoot credit: a potential difference over the predicted end of the completion against its budget."""

import math

import pytest
import torch

from lenvm_rl import budget_overshoot_credits, length_to_value, value_to_length

GAMMA = 0.95


def exact_values(lengths, width):
    """Values of a critic that knows each row's remaining length exactly: V(s_t) = -(1 - γ^(L-t)), 0 from L on."""
    remaining = torch.tensor([[max(length - t, 0) for t in range(width + 1)] for length in lengths],
                             dtype=torch.float64)
    return length_to_value(remaining, GAMMA)


def mask_of(lengths, width):
    return torch.tensor([[1.0 if t < length else 0.0 for t in range(width)] for length in lengths])


def test_a_policy_that_ends_inside_its_budget_earns_nothing_at_any_token():
    lengths, width = [5, 9], 10
    credits = budget_overshoot_credits(exact_values(lengths, width), mask_of(lengths, width), torch.tensor([12., 9.]),
                                       GAMMA)
    assert torch.count_nonzero(credits.abs() > 1e-9) == 0


def test_it_telescopes_to_the_realized_against_the_predicted_overshoot():
    torch.manual_seed(0)
    width, lengths = 12, [12, 7, 10]
    mask = mask_of(lengths, width)
    values = -torch.rand(3, width + 1, dtype=torch.float64) * 0.9  # any critic
    budgets = torch.tensor([6.0, 4.0, 20.0], dtype=torch.float64)
    terminated = torch.tensor([False, True, True])
    credits = budget_overshoot_credits(values, mask, budgets, GAMMA, terminated)

    def remaining(value):
        return math.log(1 + value) / math.log(GAMMA)

    for row, (length, budget) in enumerate(zip(lengths, budgets.tolist(), strict=True)):
        predicted = max(0.0, remaining(values[row, 0].item()) - budget)
        end = remaining(values[row, length].item()) if not terminated[row] else 0.0
        realized = max(0.0, length + end - budget)
        assert credits[row].sum().item() == pytest.approx((predicted - realized) / budget, abs=1e-9)
        assert torch.all(credits[row, length:] == 0)


def test_the_token_that_pushes_the_end_past_the_budget_is_the_one_charged():
    # an exact critic of a policy that stops after 3 tokens unless token 1 opens a 10-token detour
    width, budget = 14, 6.0
    values = exact_values([13], width)
    # before the detour the critic expects 3 tokens to go
    values[0, :2] = length_to_value(torch.tensor([3.0, 2.0], dtype=torch.float64), GAMMA)
    credits = budget_overshoot_credits(values, mask_of([13], width), torch.tensor([budget]), GAMMA)
    # token 1 moves the predicted end from 3 to 13 tokens: overshoot 0 → 7, credit -7/6; no other token is charged
    assert credits[0, 1].item() == pytest.approx(-7.0 / budget)
    assert torch.all(credits[0, torch.arange(width) != 1].abs() < 1e-9)


@pytest.mark.parametrize("budgets, message", [(torch.tensor([0.0]), "finite token counts > 0"),
                                              (torch.tensor([3.0, 4.0]), r"budgets must have shape \(B,\)")])
def test_bad_budgets_are_named(budgets, message):
    with pytest.raises(ValueError, match=message):
        budget_overshoot_credits(exact_values([3], 4), mask_of([3], 4), budgets, GAMMA)


def test_grpo_budget_estimator_is_silent_inside_the_budget_and_speaks_past_it(tiny_model_dir, tmp_path,
                                                                              make_constant_critic):
    """Through the real trainer: with a budget no completion can reach the length term is exactly 0 (every token
    of a completion keeps GRPO's one advantage); with a tight one it is not; a prompt without a budget is named."""
    from datasets import Dataset

    from lenvm_rl import LenVMGRPOConfig, LenVMGRPOTrainer

    critic = tmp_path / "critic"
    make_constant_critic(-0.5).save_pretrained(critic)  # 6.6 tokens to go at every state

    def reward(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    def run(budget):
        rows = [{"prompt": f"add: {i} {i + 3}", "budget": budget} for i in range(2) for _ in range(4)]
        args = LenVMGRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=8,
                               num_generations=4, max_completion_length=16, use_cpu=True, bf16=False,
                               report_to="none", beta=0.0, seed=0, save_strategy="no", disable_tqdm=True,
                               critic_model_name_or_path=str(critic), length_estimator="budget", length_gate="none",
                               length_coef=1.0)
        torch.manual_seed(0)
        trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=reward, args=args,
                                   train_dataset=Dataset.from_list(rows))
        torch.manual_seed(1)
        return trainer._generate_and_score_completions(rows)

    roomy, tight = run(1000), run(2)
    torch.testing.assert_close(roomy["completion_ids"], tight["completion_ids"])
    mask = roomy["completion_mask"].bool()
    for row in range(8):
        tokens = roomy["advantages"][row][mask[row]]
        assert torch.allclose(tokens, tokens[0].expand_as(tokens))  # GRPO's advantage, nothing added
    assert (roomy["advantages"] - tight["advantages"]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="reads each prompt's token budget from column 'budget'; row 0"):
        run(None)


def test_ppo_budget_shaping_adds_the_overshoot_credit_before_the_task_gae(tiny_model_dir, tmp_path):
    """Critic PPO with length_mode=shaping and length_estimator=budget: the token rewards the task GAE sees are the
    task rewards plus β · c_t (budget_overshoot_credits of the frozen LenVM critic), checked by hand through the
    real trainer; and the shaped rewards of a terminated completion sum to the reward minus β·(realized − predicted
    overshoot)/N."""
    from conftest import ppo_batch_by_hand
    from datasets import Dataset

    from lenvm_rl import LengthValueModel, LenVMPPOConfig, LenVMPPOTrainer, task_gae
    from lenvm_rl.tiny import build_tiny_tokenizer

    def reward(completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    rows = [{"prompt": f"add: {i} {i + 3}", "budget": budget} for i, budget in ((0, 3), (1, 6)) for _ in range(4)]
    common = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=24, use_cpu=True,
                  bf16=False, report_to="none", beta=0.0, seed=0, save_strategy="no", disable_tqdm=True,
                  max_steps=1, whiten_task_advantages=False, lam_task=0.9, length_mode="shaping", length_coef=0.5)
    args = LenVMPPOConfig(output_dir=str(tmp_path), length_estimator="budget", **common)
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=reward, args=args,
                              train_dataset=Dataset.from_list(rows), critic=critic,
                              critic_processing_class=build_tiny_tokenizer())
    trainer.model.eval()  # no task-critic update: the values below are the ones the GAE used
    output = trainer._generate_and_score_completions(rows)
    mask, terminated, task_values, potential, rewards = ppo_batch_by_hand(trainer, critic, output, reward)
    budgets = torch.tensor([3.0] * 4 + [6.0] * 4)
    credits = budget_overshoot_credits(potential, mask, budgets, 0.9, terminated)
    assert credits.abs().max() > 1e-3  # budgets of 3 and 6 tokens are overshot by this policy
    expected, _ = task_gae(task_values, rewards + 0.5 * credits, mask, 1.0, 0.9, terminated)
    torch.testing.assert_close(output["advantages"], expected, atol=1e-5, rtol=1e-5)
    done = terminated.nonzero().flatten()
    assert len(done) > 0
    predicted = (value_to_length(potential[:, 0], 0.9) - budgets).clamp(min=0)
    realized = (mask.sum(dim=1).float() - budgets).clamp(min=0)
    torch.testing.assert_close(credits[done].sum(dim=1), ((predicted - realized) / budgets)[done], atol=1e-4,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="budget shaping .* needs gamma_task=1"):
        LenVMPPOConfig(output_dir=str(tmp_path), length_estimator="budget", gamma_task=0.99, **common)
    with pytest.raises(ValueError, match="length_estimator"):  # the unbiased credit is not a shaping potential
        LenVMPPOConfig(output_dir=str(tmp_path), length_estimator="unbiased", **common)


def _correct_if_a(completions, **kwargs):
    return [1.0 if c.startswith("a") else 0.0 for c in completions]


@pytest.mark.parametrize("mode, expected", [
    # lengths 3, 10, 14 against budget 10 (α 0.1, δ 0.5); the last completion is wrong
    ("max", [0.0, 0.5 - 1.0, 0.0]),   # correct, 7 under: clip(1.2) = 1 → 0; at the budget: 0.5 - 1; wrong: 0
    ("gated", [0.0, 0.0, 0.0]),       # nobody correct is over the budget
])
def test_budget_rewards_pay_correct_answers_by_the_budget_and_never_wrong_ones(mode, expected):
    from lenvm_rl import BudgetLengthReward

    reward = BudgetLengthReward(_correct_if_a, mode=mode, alpha=0.1, delta=0.5)
    got = reward(prompts=["p"] * 3, completions=["a..", "a" * 10, "b" * 14], completion_ids=[[0] * 3, [0] * 10,
                                                                                            [0] * 14],
                 budget=[10, 10, 10])
    assert got == pytest.approx(expected)
    over = reward(prompts=["p"], completions=["a" * 14], completion_ids=[[0] * 14], budget=[10])
    assert over == pytest.approx([0.1 - 1.0] if mode == "max" else [-1.0])  # clip(0.1·(-4) + 0.5) = 0.1


def test_budget_reward_names_a_missing_column_and_bad_options():
    from lenvm_rl import BudgetLengthReward

    with pytest.raises(ValueError, match="column 'budget' .* was not passed"):
        BudgetLengthReward(_correct_if_a)(prompts=["p"], completions=["a"], completion_ids=[[0]])
    with pytest.raises(ValueError, match="mode must be 'max' or 'gated'"):
        BudgetLengthReward(_correct_if_a, mode="exact")
    with pytest.raises(ValueError, match="delta must lie in"):
        BudgetLengthReward(_correct_if_a, delta=2.0)
