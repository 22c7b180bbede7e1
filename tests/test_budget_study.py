"""Budget-following in the study harness: budget variants of the built-in tasks, budget metrics in the evaluation
(adherence, |L − N| / N, hard truncation), the budget methods, and the report's per-budget table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lenvm_rl.cli import main
from lenvm_rl.rewards import BudgetLengthReward, TargetLengthReward
from lenvm_rl.study.evaluate import evaluate_policy
from lenvm_rl.study.methods import plan_run
from lenvm_rl.study.preregister import choose_budget_coefficients
from lenvm_rl.study.report import ADHERENCE_BAR, StudyTable, adherence_by_step, budget_table
from lenvm_rl.study.tasks import get_task, task_names
from lenvm_rl.study.tasks.budget import (
    multi_parity_budget_correctness,
    render_budget,
    split_budget,
    without_budget,
)
from lenvm_rl.study.tasks.multi_parity import multi_parity_correctness
from lenvm_rl.tasks import checked_parity_correctness


def test_the_budget_line_round_trips_and_other_text_is_left_alone():
    assert render_budget("parity 101", 12) == "parity 101\nwithin 12 tokens"
    assert split_budget("parity 101\nwithin 12 tokens") == ("parity 101", 12)
    for text in ("parity 101", "parity 101\nwithin twelve tokens", "parity 101\nwithin 12 words"):
        assert split_budget(text) == (text, None)
    messages = [{"role": "system", "content": "be brief\nwithin 3 tokens"},
                {"role": "user", "content": "parity 101\nwithin 8 tokens"}]
    stripped = without_budget(messages)
    assert stripped == [messages[0], {"role": "user", "content": "parity 101"}]
    assert messages[1]["content"].endswith("within 8 tokens")  # the input is not modified


@pytest.mark.parametrize("name, base", [("checked_parity_budget", "checked_parity"),
                                        ("multi_parity_budget", "multi_parity")])
def test_budget_rows_are_the_base_rows_with_cycling_budgets(name, base):
    task, base_task = get_task(name), get_task(base)
    assert name in task_names() and task.budget_column == "budget" and base_task.budget_column is None
    rows, base_rows = task.rows(12, seed=5), base_task.rows(12, seed=5)
    assert [row["budget"] for row in rows] == [task.budgets[i % len(task.budgets)] for i in range(12)]
    for row, base_row in zip(rows, base_rows, strict=True):
        assert without_budget(row["prompt"]) == base_row["prompt"]
        assert row["prompt"][0]["content"].endswith(f"\nwithin {row['budget']} tokens")
        assert row["answer"] == base_row["answer"] and row["difficulty"] == base_row["difficulty"]
        assert task.ideal_completion(row) == base_task.ideal_completion(base_row)
    warmup, base_warmup = task.warmup_rows(6, seed=1), base_task.warmup_rows(6, seed=1)
    # the starting policy sees the budget and writes what it would without one
    assert [row["completion"] for row in warmup] == [row["completion"] for row in base_warmup]
    assert all("budget" not in row and split_budget(row["prompt"][0]["content"])[1] in task.budgets
               for row in warmup)
    assert task.segments == base_task.segments and task.warmup_max_length > base_task.warmup_max_length


def test_the_budget_tasks_score_and_diagnose_as_their_base_tasks():
    task, base = get_task("multi_parity_budget"), get_task("multi_parity")
    (row,) = task.rows(1, seed=2)
    completion = base.ideal_completion({**row, "prompt": without_budget(row["prompt"])})
    assert multi_parity_budget_correctness([completion], [row["answer"]], prompts=[row["prompt"]]) == [1.0]
    with pytest.raises(ValueError, match="not a multi-parity prompt"):  # the base reward cannot read the line
        multi_parity_correctness([completion], [row["answer"]], prompts=[row["prompt"]])
    prompt, stripped = row["prompt"][0]["content"], without_budget(row["prompt"])[0]["content"]

    def length(text):
        return len(text)

    assert task.expected_remaining(prompt, "", length, 0.95) == pytest.approx(
        base.expected_remaining(stripped, "", length, 0.95))
    assert task.decision_states(prompt, completion) == base.decision_states(stripped, completion)
    # checked parity's reward reads only the answer column, so the budget task uses it as it is
    assert get_task("checked_parity_budget").reward_func == "lenvm_rl.tasks:checked_parity_correctness"


def test_forced_decisions_see_the_base_rows():
    task = get_task("checked_parity_budget")
    rows = task.rows(4, seed=0)
    seen = []

    def evaluate(prefix, correctness):
        seen.append([prefix(row) for row in rows])
        scores = correctness(prompts=[row["prompt"] for row in rows], completions=["=0"] * 4,
                             answer=[row["answer"] for row in rows])
        return {"correct": np.asarray(scores), "tokens": np.ones(4)}

    forced = task.forced_decisions(evaluate, rows)
    assert forced["level"] == [row["difficulty"] for row in rows]
    assert seen[0] == ["="] * 4 and all(" " in text or len(text) == 1 for text in seen[1])


def _length_reward(limit):
    def reward(completion_ids, **kwargs):
        return [1.0 if len(ids) <= limit else 0.0 for ids in completion_ids]
    return reward


def test_evaluation_reports_adherence_error_and_hard_truncation(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def likelier_eos(module, inputs, logits):  # a random model almost never ends: make it end at varied lengths
        logits[..., tokenizer.eos_token_id] += 4.0
        return logits

    model.get_output_embeddings().register_forward_hook(likelier_eos)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "budget": budget}
            for i, budget in enumerate([1, 2, 3, 5, 8, 13])]
    result = evaluate_policy(model, tokenizer, rows, _length_reward(3), num_samples=1, max_new_tokens=12, seed=0,
                             budget_column="budget")
    lengths, budgets = result["tokens"], np.asarray([row["budget"] for row in rows], dtype=float)
    assert len(set(lengths.tolist())) > 1  # the random model writes completions of several lengths
    np.testing.assert_array_equal(result["within_budget"], (lengths <= budgets).astype(float))
    np.testing.assert_allclose(result["budget_error"], np.abs(lengths - budgets) / budgets)
    np.testing.assert_array_equal(result["truncated_tokens"], np.minimum(lengths, budgets))
    np.testing.assert_array_equal(result["correct"], (lengths <= 3).astype(float))
    # the same samples cut at N: a completion scored on at most N tokens, so within 3 whenever N ≤ 3
    np.testing.assert_array_equal(result["truncated_correct"], (np.minimum(lengths, budgets) <= 3).astype(float))
    plain = evaluate_policy(model, tokenizer, rows, _length_reward(3), num_samples=1, max_new_tokens=12, seed=0)
    assert "within_budget" not in plain
    np.testing.assert_array_equal(plain["tokens"], lengths)  # the budget metrics change no sample


def test_guided_decoding_keeps_every_sample_within_its_budget(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lenvm_rl import LengthValueModel
    from lenvm_rl.study.evaluate import sample_within_budgets

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    rows = [{"prompt": f"q{i}", "budget": budget} for i, budget in enumerate([2, 3, 5, 8])]
    guided = evaluate_policy(model, tokenizer, rows, _length_reward(3), num_samples=2, max_new_tokens=16, seed=0,
                             budget_column="budget", critic=critic)
    plain = evaluate_policy(model, tokenizer, rows, _length_reward(3), num_samples=2, max_new_tokens=16, seed=0,
                            budget_column="budget")
    assert guided["within_budget"].tolist() == [1.0] * 4 and plain["within_budget"].mean() < 0.5
    assert (guided["tokens"] <= np.asarray([2, 3, 5, 8])).all() and guided["terminated"].tolist() == [1.0] * 4
    prompt_ids = [tokenizer("ab")["input_ids"], tokenizer("abcd")["input_ids"]]
    samples = sample_within_budgets(model, critic, tokenizer, prompt_ids, [4, 6], num_samples=3, max_new_tokens=16)
    assert [len(ids) <= budget for (ids, _), budget in zip(samples, [4] * 3 + [6] * 3, strict=True)] == [True] * 6
    assert all(done and ids[-1] == tokenizer.eos_token_id for ids, done in samples)
    with pytest.raises(ValueError, match="2 budgets for 1 prompts"):
        sample_within_budgets(model, critic, tokenizer, prompt_ids[:1], [4, 6])
    with pytest.raises(ValueError, match="guided decoding under a budget needs budget_column"):
        evaluate_policy(model, tokenizer, rows, _length_reward(3), critic=critic)


def test_guided_evaluation_needs_a_budget_task(tmp_path, capsys):
    import yaml
    from test_study import TINY

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "out"),
                                                          "eval_guided": True}))
    assert main(["study", "--config", str(tmp_path / "recipe.yaml")]) == 2
    assert "eval_guided decodes under each prompt's token budget: use a budget task" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluation_names_a_row_without_a_budget(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "a", "budget": 4}, {"prompt": "b", "budget": 0}]
    with pytest.raises(ValueError, match=r"budget_column 'budget': row 1 has no budget ≥ 1 \(0\)"):
        evaluate_policy(model, tokenizer, rows, _length_reward(3), budget_column="budget")


def test_budget_methods_build_the_l1_rewards_and_the_token_level_term():
    correctness = checked_parity_correctness
    plan = plan_run("lcpo_max", 0.05, [correctness], 64, None, budget_column="budget")
    (term,) = plan.reward_funcs[1:]
    assert isinstance(term, BudgetLengthReward) and term.mode == "max" and term.alpha == 0.05
    # a correct answer 10 tokens over a budget of 20: clip(0.05 · (20 − 30) + 0.5, 0, 1) − 1 = −1
    values = term(prompts=["p", "p"], completions=["=1", "=1"], completion_ids=[[0] * 30, [0] * 5],
                  answer=["1", "1"], budget=[20, 20])
    assert values == pytest.approx([-1.0, 0.0])
    gated = plan_run("budget_gated", 0.0, [correctness], 64, None, budget_column="budget").reward_funcs[1]
    assert gated.mode == "gated"
    exact = plan_run("lcpo_exact", 0.01, [correctness], 64, None, budget_column="budget").reward_funcs[1]
    assert isinstance(exact, TargetLengthReward) and exact.target_column == "budget" and exact.coef == 0.01
    token = plan_run("lenvm_budget", 0.5, [correctness], 64, "critic", budget_column="budget")
    assert token.overrides["length_estimator"] == "budget" and token.overrides["budget_column"] == "budget"
    assert token.overrides["length_gate"] == "success" and token.overrides["length_coef"] == 0.5
    ppo = plan_run("ppo_budget", 0.5, [correctness], 64, "critic", budget_column="budget")
    assert ppo.trainer_class.__name__ == "LenVMPPOTrainer" and ppo.overrides["length_mode"] == "shaping"
    assert ppo.overrides["length_estimator"] == "budget" and "length_gate" not in ppo.overrides
    ppo.config_class(output_dir="unused", use_cpu=True, report_to="none", **ppo.overrides)  # a valid config
    for method in ("lcpo_max", "lcpo_exact", "budget_gated", "lenvm_budget", "ppo_budget"):
        with pytest.raises(ValueError, match=f"method '{method}' reads each prompt's token budget"):
            plan_run(method, 0.1, [correctness], 64, "critic")


def _table(correct, within, error):
    """A StudyTable of hand-made per-prompt metrics: C configurations × 1 seed × P prompts."""
    variants = {"none": {"method": "none"}, "lcpo_max": {"method": "lcpo_max", "grid": [0.1]}}
    configs = [("none", 0.0), ("lcpo_max", 0.1)]
    results = [{"label": label, "coef": coef, "seed": 0, "seconds": 1.0,
                "eval": {"correct": correct[i], "tokens": [5.0] * len(correct[i]), "within_budget": within[i],
                         "budget_error": error[i]}} for i, (label, coef) in enumerate(configs)]
    return StudyTable(results, variants)


def test_the_budget_table_splits_prompts_by_budget_and_finds_the_target():
    budgets = [4, 8, 4, 8]
    table = _table(correct=[[1, 1, 0, 1], [1, 0, 1, 0]], within=[[0, 1, 0, 1], [1, 1, 1, 0]],
                   error=[[0.5, 0, 1, 0], [0, 0, 0, 1]])
    start = {"correct": [1, 1, 1, 1], "tokens": [6, 6, 6, 6], "within_budget": [0, 1, 0, 1],
             "budget_error": [0.5, 0.25, 0.5, 0.25], "truncated_correct": [0, 1, 1, 1],
             "truncated_tokens": [4, 6, 4, 6]}
    result = budget_table(table, start, budgets, samples=50)
    assert result["budgets"] == [4, 8]
    none, lcpo = result["systems"]["none 0"], result["systems"]["lcpo_max 0.1"]
    assert none["4"]["correct"][0] == pytest.approx(0.5) and none["8"]["correct"][0] == pytest.approx(1.0)
    assert lcpo["4"]["within_budget"][0] == pytest.approx(1.0) and lcpo["8"]["budget_error"][0] == pytest.approx(0.5)
    truncated = result["systems"]["starting policy, truncated at N"]
    assert truncated["4"]["correct"][0] == pytest.approx(0.5) and truncated["4"]["within_budget"][0] == 1.0
    assert truncated["8"]["budget_error"][0] == pytest.approx(0.25)
    low, high = lcpo["4"]["correct"][1:]
    assert low <= lcpo["4"]["correct"][0] <= high
    # at N = 4 only lcpo_max adheres (1.0 ≥ the bar); its accuracy 1.0 ÷ truncation's 0.5
    target = result["target"]
    assert target["system"] == "lcpo_max 0.1" and target["ratio"] == pytest.approx(2.0)
    assert target["adherence"] >= ADHERENCE_BAR


def test_no_target_when_nothing_adheres_at_the_tightest_budget():
    table = _table(correct=[[1, 1], [1, 1]], within=[[0, 1], [0, 1]], error=[[1, 0], [1, 0]])
    start = {"correct": [1, 1], "tokens": [9, 9], "within_budget": [0, 0], "budget_error": [1, 1],
             "truncated_correct": [0, 0], "truncated_tokens": [4, 8]}
    result = budget_table(table, start, [4, 8], samples=20)
    # the truncated starting policy always adheres but is the reference, not a candidate
    assert result["target"] is None and math.isfinite(result["systems"]["none 0"]["8"]["correct"][0])


def test_adherence_by_step_counts_the_samples_until_the_best_sequence_level_adherence():
    def result(label, method, at_step, final):
        return {"label": label, "method": method, "coef": 0.5, "seed": 0, "eval": {"within_budget": final},
                "eval_at_steps": {"10": {"within_budget": at_step}}}

    curve = adherence_by_step([result("lcpo_max", "lcpo_max", [0.0, 0.5], [1.0, 0.5]),
                               result("lenvm_budget", "lenvm_budget", [1.0, 0.5], [1.0, 1.0]),
                               result("none", "none", [0.0, 0.0], [0.0, 0.5])], rl_steps=50, samples_per_step=32)
    assert curve["steps"] == [10, 50] and curve["reference"] == pytest.approx(0.75)
    assert curve["adherence"]["lenvm_budget 0.5"] == {10: 0.75, 50: 1.0}
    assert curve["samples_to_reference"] == {"lcpo_max 0.5": 50 * 32, "lenvm_budget 0.5": 10 * 32,
                                             "none 0.5": math.inf}
    assert adherence_by_step([{**result("x", "lcpo_max", [1], [1]), "eval_at_steps": {}}], 50, 32) is None


def _budget_sweep(rows, seeds=(0,)):
    """A StudyTable from ``(label, method, coef, correct, within)`` rows (the same on every seed), prompts with
    budgets 4, 4, 8, 8."""
    variants = {}
    for label, method, coef, *_ in rows:
        variants.setdefault(label, {"method": method, "grid": []})["grid"].append(coef)
    results = [{"label": label, "coef": coef, "seed": seed, "seconds": 1.0,
                "eval": {"correct": correct, "tokens": [5.0] * 4, "within_budget": within, "budget_error": [0.0] * 4}}
               for label, _, coef, correct, within in rows for seed in seeds]
    return StudyTable(results, variants)


def test_the_budget_rule_keeps_the_most_accurate_adherent_coefficient_else_the_most_adherent():
    table = _budget_sweep([
        ("none", "none", 0.0, [1, 1, 1, 1], [0, 0, 1, 1]),
        # both adhere (4/4): the more accurate at N = 4 wins, though it is less accurate over all budgets
        ("lcpo_max", "lcpo_max", 0.1, [1, 0, 1, 1], [1, 1, 1, 1]),
        ("lcpo_max", "lcpo_max", 0.2, [1, 1, 0, 0], [1, 1, 1, 1]),
        # neither adheres: the higher adherence wins, though it is the less accurate
        ("lcpo_exact", "lcpo_exact", 0.1, [1, 1, 1, 1], [0, 1, 1, 1]),
        ("lcpo_exact", "lcpo_exact", 0.2, [0, 0, 1, 1], [0, 1, 1, 1.0]),
        ("lcpo_exact", "lcpo_exact", 0.4, [0, 0, 1, 1], [1, 0.5, 1, 1]),
        ("lenvm_budget", "lenvm_budget", 8.0, [0, 1, 1, 1], [1, 1, 1, 1]),
    ])
    choice = choose_budget_coefficients(table, [4, 4, 8, 8])
    assert choice.tightest == 4
    assert choice.coefficients == {"lcpo_max": 0.2, "lcpo_exact": 0.4, "lenvm_budget": 8.0}
    assert choice.adherence["lcpo_exact"] == pytest.approx(0.875)
    assert choice.tightest_accuracy["lcpo_max"] == pytest.approx(1.0)
    assert choice.comparator == "lcpo_max"  # adherent beats non-adherent
    with pytest.raises(ValueError, match="one per evaluation prompt"):
        choose_budget_coefficients(table, [4, 8])
    with pytest.raises(ValueError, match="no finished LCPO variant"):
        choose_budget_coefficients(_budget_sweep([("none", "none", 0.0, [1] * 4, [1] * 4),
                                                  ("lenvm_budget", "lenvm_budget", 8.0, [1] * 4, [1] * 4)]),
                                   [4, 4, 8, 8])


def test_the_pair_comparison_is_the_paired_difference_with_an_interval():
    table = _budget_sweep([("none", "none", 0.0, [1, 1, 1, 1], [0, 0, 1, 1]),
                           ("lcpo_max", "lcpo_max", 0.2, [1, 0, 1, 0], [1, 0, 1, 1]),
                           ("lenvm_budget", "lenvm_budget", 8.0, [1, 1, 1, 0], [1, 1, 1, 1])])
    comparison = budget_table(table, None, [4, 4, 8, 8], samples=200,
                              pair=("lenvm_budget", "lcpo_max"))["comparison"]
    assert comparison["pair"] == ["lenvm_budget", "lcpo_max"]
    assert comparison["correct@4"][0] == pytest.approx(0.5) and comparison["within_budget@4"][0] == pytest.approx(0.5)
    assert comparison["correct@all"][0] == pytest.approx(0.25)
    low, high = comparison["within_budget@all"][1:]
    assert low <= 0.25 <= high
    assert budget_table(table, None, [4, 4, 8, 8], samples=20)["comparison"] is None
    # paired replicates: two systems that differ by the same amount on every prompt differ by exactly that in
    # every replicate (unpaired draws would spread the interval), over two seeds
    rows = [("none", "none", 0.0, [1, 1, 1, 1], [0, 0, 1, 1]),
            ("lcpo_max", "lcpo_max", 0.2, [0.5, 0.25, 0.75, 0.5], [1, 0, 1, 1]),
            ("lenvm_budget", "lenvm_budget", 8.0, [0.75, 0.5, 1.0, 0.75], [1, 0, 1, 1])]
    paired = budget_table(_budget_sweep(rows, seeds=(0, 1)), None, [4, 4, 8, 8], samples=200,
                          pair=("lenvm_budget", "lcpo_max"))["comparison"]
    assert paired["correct@all"] == pytest.approx([0.25, 0.25, 0.25])
    assert paired["within_budget@4"] == pytest.approx([0.0, 0.0, 0.0])
    # a grid of several coefficients is no pair: no comparison
    several = _budget_sweep(rows + [("lcpo_max", "lcpo_max", 0.4, [1, 1, 1, 1], [1, 1, 1, 1])])
    assert budget_table(several, None, [4, 4, 8, 8], samples=20, pair=("lenvm_budget", "lcpo_max"))[
        "comparison"] is None


def test_adherence_by_step_reads_the_preregistered_comparator_per_seed():
    def result(label, method, seed, at_step, final):
        return {"label": label, "method": method, "coef": 1.0, "seed": seed, "eval": {"within_budget": final},
                "eval_at_steps": {"10": {"within_budget": at_step}}}

    results = [result("lcpo_max", "lcpo_max", 0, [0.5], [0.5]), result("lcpo_max", "lcpo_max", 1, [0.0], [1.0]),
               # budget_gated ends higher, but the comparator is lcpo_max
               result("budget_gated", "budget_gated", 0, [0.0], [1.0]),
               result("lenvm_budget", "lenvm_budget", 0, [0.5], [1.0]),
               result("lenvm_budget", "lenvm_budget", 1, [0.5], [1.0])]
    curve = adherence_by_step(results, rl_steps=50, samples_per_step=32, comparator="lcpo_max")
    assert curve["reference"] == pytest.approx(0.75) and curve["reference_system"] == "lcpo_max 1"
    assert curve["samples_to_reference"]["budget_gated 1"] == 50 * 32
    # seed 0: lcpo_max's own 0.5 is reached at step 10; seed 1: its 1.0 only at step 50 by both
    assert curve["samples_to_reference_by_seed"]["lenvm_budget 1"] == {"0": 320.0, "1": 1600.0}
    assert curve["samples_to_reference_by_seed"]["lcpo_max 1"] == {"0": 320.0, "1": 1600.0}
    assert adherence_by_step(results, 50, 32)["reference"] == pytest.approx(1.0)  # the best sequence-level
    # a comparator with two coefficients names no single system: back to the best sequence-level reference
    two = results + [{**result("lcpo_max", "lcpo_max", 0, [1.0], [1.0]), "coef": 2.0}]
    curve = adherence_by_step(two, 50, 32, comparator="lcpo_max")
    assert curve["reference_system"] is None and "samples_to_reference_by_seed" not in curve


def test_samples_ratio_bounds_each_crossing_by_the_evaluation_grid():
    from lenvm_rl.study.report import _budget_headline, _budget_targets_section, samples_ratio

    def result(label, method, seed, at_10, at_25, final):
        return {"label": label, "method": method, "coef": 1.0, "seed": seed, "eval": {"within_budget": final},
                "eval_at_steps": {"10": {"within_budget": at_10}, "25": {"within_budget": at_25}}}

    # the comparator ends at 0.9 (first there at step 50); the token-level run is below it at 10, at it by 25
    results = [result("lcpo_max", "lcpo_max", 0, [0.5], [0.7], [0.9]),
               result("lenvm_budget", "lenvm_budget", 0, [0.8], [0.9], [1.0])]
    curve = adherence_by_step(results, rl_steps=50, samples_per_step=32, comparator="lcpo_max")
    ratio = samples_ratio(curve, "lenvm_budget", "lcpo_max")
    assert ratio["ratio"] == pytest.approx(25 / 50) and ratio["per_seed"] == [pytest.approx(0.5)]
    assert ratio["head_steps"] == [10, 25] and ratio["other_steps"] == [25, 50]
    # the grid alone: head crossed in (10, 25], the comparator in (25, 50]
    assert ratio["bounds"] == [pytest.approx(10 / 50), pytest.approx(25 / 25)]
    # the comparator rose into its final value at its last step: if monotone, it crossed exactly there
    assert ratio["bounds_if_monotone"] == [pytest.approx(10 / 50), pytest.approx(25 / 50)]
    comparison = {"correct@all": [-0.05, -0.08, -0.02], "within_budget@all": [0.03, 0.01, 0.05]}
    headline = _budget_headline({"samples_ratio": ratio, "comparison": comparison}, preregistered=True)
    assert headline.startswith("Headline: `lenvm_budget` reaches the pre-registered comparator `lcpo_max`'s final "
                               "adherence (0.900) in 0.50× its RL samples (0.50 on 1 of 1 seeds")
    assert "(0.20, 0.50] if the comparator's adherence rises monotonically" in headline
    assert "accuracy -0.050 [-0.080, -0.020]" in headline
    targets = "\n".join(_budget_targets_section({"samples_ratio": ratio, "comparison": comparison, "target": None}))
    assert "≤ 0.6× its RL samples, on the mean curves and on every seed: **met**" in targets
    assert "**not at equal adherence**" in targets  # adherence differs: accuracy is not judged
    level = {**comparison, "within_budget@all": [0.01, -0.01, 0.03]}
    targets = "\n".join(_budget_targets_section({"samples_ratio": ratio, "comparison": level, "target": None}))
    assert "at equal adherence, interval excluding 0: **missed**" in targets
    # a comparator that peaked before its end: its final value was first reached at step 25, and no monotone bound
    peaked = [result("lcpo_max", "lcpo_max", 0, [0.5], [0.95], [0.9]), results[1]]
    ratio = samples_ratio(adherence_by_step(peaked, 50, 32, comparator="lcpo_max"), "lenvm_budget", "lcpo_max")
    assert ratio["other_steps"] == [10, 25] and ratio["bounds_if_monotone"] is None
    assert ratio["bounds"] == [pytest.approx(10 / 25), pytest.approx(25 / 10)]
    assert "rises monotonically" not in _budget_headline({"samples_ratio": ratio, "comparison": comparison}, True)
    # a token-level run that never gets there has no ratio, and the headline says so
    results[1] = result("lenvm_budget", "lenvm_budget", 0, [0.1], [0.2], [0.3])
    ratio = samples_ratio(adherence_by_step(results, 50, 32, comparator="lcpo_max"), "lenvm_budget", "lcpo_max")
    assert ratio["ratio"] == math.inf and ratio["head_steps"] == [50, math.inf]
    assert "never reaches" in _budget_headline({"samples_ratio": ratio, "comparison": comparison}, True)
    assert samples_ratio(curve, "lenvm_budget", "budget_gated") is None  # a label the curves do not hold
    two = [*results, {**result("lenvm_budget", "lenvm_budget", 0, [0.9], [0.9], [1.0]), "coef": 2.0}]
    curve = adherence_by_step(two, 50, 32, comparator="lcpo_max")
    assert samples_ratio(curve, "lenvm_budget", "lcpo_max") is None  # two coefficients name no single system


def test_a_budget_study_runs_end_to_end_and_reports_per_budget(tmp_path):
    """task: checked_parity_budget through every stage: warm-up on budget prompts, critic, the sequence-level budget
    rewards and the token-level budget term in GRPO, the starting policy's hard truncation, and the Budgets
    section with its plot."""
    import yaml
    from test_study import TINY

    out = tmp_path / "out"
    recipe = {**TINY, "output_dir": str(out), "task": "checked_parity_budget", "headline_method": "lenvm_budget/batch",
              "eval_at_steps": [1], "eval_guided": True,
              "methods": {"none": {"method": "none"}, "lcpo_max": {"method": "lcpo_max", "grid": [0.1]},
                          "budget_gated": {"method": "budget_gated"},
                          "lenvm_budget": {"method": "lenvm_budget", "grid": [1.0]}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["study", "--config", str(tmp_path / "recipe.yaml")]) == 0
    report = (out / "report.md").read_text()
    assert "## Budgets" in report and "starting policy, truncated at N" in report
    assert "| system | N = 8 | N = 12 | N = 16 | N = 24 | N = 32 |" in report
    assert "| system | step 1 | step 2 | samples to reach |" in report  # adherence against RL samples
    for system in ("| starting policy, guided |", "| lenvm_budget/batch 1, guided |", "| lcpo_max/batch 0.1, guided |"):
        assert system in report, system
    budgets = json.loads((out / "report.json").read_text())["budgets"]
    # guided decoding never writes past the budget: adherence 1 for every system at every budget
    assert all(cell["within_budget"][0] == 1.0 for name, cells in budgets["systems"].items() if "guided" in name
               for cell in cells.values())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["variant"] for row in rows} == {"none", "lcpo_max/batch", "budget_gated", "lenvm_budget/batch"}
    for row in rows:
        assert 0.0 <= row["within_budget"] <= 1.0 and row["budget_error"] >= 0.0
        assert set(row["by_budget"]) <= {"8", "12", "16", "24", "32"}
    start = json.loads((out / "start.json").read_text())
    assert all(t <= n for t, n in zip(start["truncated_tokens"],
                                      json.loads((out / "eval_prompts.json").read_text())["budget"], strict=True))
    assert (out / "budgets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["budgets"]["budgets"] == [8, 12, 16, 24, 32]

    # the budget rule writes the confirmatory recipe: one coefficient per budget variant, the sweep's headline
    from trl import TrlParser

    from lenvm_rl.study.runner import StudyConfig

    confirmatory = tmp_path / "confirmatory.yaml"
    assert main(["preregister", "--sweep", str(out), "--output", str(confirmatory), "--output_dir",
                 str(tmp_path / "confirm"), "--seeds", "5", "6", "7", "8", "9"]) == 0
    (config,) = TrlParser((StudyConfig,)).parse_args_and_config(["--config", str(confirmatory)])
    assert (config.headline_method, config.comparator_method) == ("lenvm_budget/batch", "lcpo_max/batch")
    assert config.methods["lcpo_max/batch"]["grid"] == [0.1] and config.methods["lenvm_budget/batch"]["grid"] == [1.0]
    assert "grid" not in config.methods["budget_gated"] and config.eval_at_steps == [1] and config.eval_guided
    assert set(config.preregistration["coefficients"]) == {"lcpo_max/batch", "budget_gated", "lenvm_budget/batch"}
    assert "highest accuracy at the tightest budget (N = 8)" in config.preregistration["rule"]


def _budget_chat_files(tmp_path):
    from lenvm_rl.study.tasks.budget import render_budget

    data, held_out = tmp_path / "prompts.jsonl", tmp_path / "held_out.jsonl"
    for path, numbers in ((data, range(4, 24)), (held_out, range(4))):
        path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": render_budget(f"add {i} {i}", n)}],
                                            "answer": str(2 * i), "budget": n}) + "\n"
                                for i, n in zip(numbers, [4, 8] * 20, strict=False)))
    return data, held_out


def test_a_dataset_recipe_with_a_budget_column_runs_the_budget_study(tmp_path, tiny_model_dir):
    """The SmolLM2 budget recipe's path on a tiny model: chat prompts of a dataset file carrying a budget column,
    the budget methods reading it, guided evaluation under it, and the Budgets section from it."""
    from test_study import write_recipe

    from lenvm_rl import LengthValueModel

    data, held_out = _budget_chat_files(tmp_path)
    critic = tmp_path / "critic"
    LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9).save_pretrained(critic)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", output_dir=str(out), dataset=str(data),
                          eval_dataset=str(held_out), budget_column="budget", eval_guided=True,
                          policy=str(tiny_model_dir), critic=str(critic), difficulty_column=None, eval_prompts=4,
                          reward_funcs=["arithmetic_correctness"], max_completion_length=12, eval_greedy=False,
                          normalizations=None, headline_method="lenvm_budget",
                          methods={"none": {"method": "none"}, "lcpo_max": {"method": "lcpo_max", "grid": [0.2]},
                                   "lenvm_budget": {"method": "lenvm_budget", "grid": [1.0]}})
    assert main(["study", "--config", str(recipe)]) == 0
    prompts = json.loads((out / "eval_prompts.json").read_text())
    assert prompts["budget"] == [4, 8, 4, 8]
    budgets = json.loads((out / "report.json").read_text())["budgets"]
    assert budgets["budgets"] == [4, 8] and "lenvm_budget 1, guided" in budgets["systems"]
    assert all(cell["within_budget"][0] == 1.0 for name, cells in budgets["systems"].items() if "guided" in name
               for cell in cells.values())
    assert "## Budgets" in (out / "report.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"budget_column": "limit"}, "budget_column 'limit' not in the training rows"),
    ({"budget_value": 0}, "budget_column 'budget' holds 0 in the training rows"),
    ({"task": "checked_parity_budget", "dataset": "builtin", "eval_dataset": None},
     "budget_column is for dataset recipes"),
    ({"budget_column": None, "methods": {"none": {"method": "none"}, "lcpo_max": {"method": "lcpo_max", "grid": [1]}}},
     "methods ['lcpo_max/batch'] read each prompt's token budget"),
])
def test_a_bad_budget_column_is_named_before_anything_runs(tmp_path, tiny_model_dir, capsys, change, message):
    from test_study import write_recipe

    data, held_out = _budget_chat_files(tmp_path)
    if "budget_value" in change:
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        rows[3]["budget"] = change.pop("budget_value")
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", **{
        "output_dir": str(out), "dataset": str(data), "eval_dataset": str(held_out), "budget_column": "budget",
        "policy": str(tiny_model_dir), "difficulty_column": None, "eval_prompts": 4,
        "reward_funcs": ["arithmetic_correctness"], **change})
    assert main(["study", "--config", str(recipe)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "runs").exists() and not (out / "study_config.json").exists()
