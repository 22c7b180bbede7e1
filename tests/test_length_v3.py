"""Length credit v3: the unbiased token credit (conditional mean 0 under an exact critic), the per-token task credit
of a frozen task critic, and the settled-answer charge — in the math and through the GRPO trainer."""

import math

import pytest
import torch

from lenvm_rl import (
    group_centered,
    length_to_value,
    process_advantages,
    relative_length_credits,
    settled_mask,
    task_reward_scale,
    unbiased_length_credits,
)

FILLER, EOS = 5, 0


def _tree_paths():
    """A policy with two decisions, one of them mid-completion: token 1 (p = 1/2) ends after 3 tokens; token 2 runs
    9 tokens to a second decision (token 3 or 4, p = 1/2 each) that ends 5 or 30 tokens later. (probability, tokens)
    per path, EOS counted."""
    short = [1, FILLER, EOS]
    long_prefix = [2] + [FILLER] * 8
    return [(0.5, short),
            (0.25, long_prefix + [3] + [FILLER] * 3 + [EOS]),
            (0.25, long_prefix + [4] + [FILLER] * 28 + [EOS])]


def _exact_values(paths, gamma):
    """(B, T+1) values of the exact critic of that policy: V(s) = E[-(1 - γ^(L - t)) | prefix], terminal 0."""
    width = max(len(tokens) for _, tokens in paths)
    values = torch.zeros(len(paths), width + 1, dtype=torch.float64)
    mask = torch.zeros(len(paths), width, dtype=torch.int64)
    for row, (_, tokens) in enumerate(paths):
        mask[row, : len(tokens)] = 1
        for t in range(len(tokens)):
            through = [(p, len(other)) for p, other in paths if other[:t] == tokens[:t]]
            total = sum(p for p, _ in through)
            values[row, t] = sum(p * -(1 - gamma ** (n - t)) for p, n in through) / total
    return values, mask


def _conditional_means(paths, credits):
    """E[c_t | s_t] over every state s_t with a token after it: {(t, prefix): mean}."""
    means = {}
    for _, tokens in paths:
        for t in range(len(tokens)):
            key = (t, tuple(tokens[:t]))
            if key in means:
                continue
            through = [(p, r) for r, (p, other) in enumerate(paths) if other[:t] == tokens[:t]]
            means[key] = sum(p * float(credits[r, t]) for p, r in through) / sum(p for p, _ in through)
    return means


@pytest.mark.parametrize("gamma", [0.9, 0.97])
def test_unbiased_credit_has_conditional_mean_zero_under_an_exact_critic(gamma):
    paths = _tree_paths()
    values, mask = _exact_values(paths, gamma)
    unbiased = _conditional_means(paths, unbiased_length_credits(values, mask, gamma))
    assert max(abs(m) for m in unbiased.values()) < 1e-12
    # the telescoping (v2) credit charges both decisions for the spread of what follows them
    telescoping = _conditional_means(paths, relative_length_credits(values, mask, gamma))
    assert telescoping[(0, ())] < -0.1
    assert telescoping[(9, (2, *[FILLER] * 8))] < -0.02
    # ... and is exactly 0 where nothing is decided, as the unbiased one is
    assert telescoping[(1, (1,))] == pytest.approx(0.0, abs=1e-12)


def test_unbiased_credit_on_the_design_example():
    """γ = 0.9, a 50/50 choice between 3 and 40 remaining tokens: v2 pays +0.68 / −3.26 (mean −1.29), v3 ±0.97."""
    gamma = 0.9
    values = torch.zeros(2, 41, dtype=torch.float64)
    mask = torch.zeros(2, 40, dtype=torch.int64)
    start = 0.5 * length_to_value(3.0, gamma) + 0.5 * length_to_value(40.0, gamma)
    for row, n in enumerate((3, 40)):
        mask[row, :n] = 1
        values[row, 0] = start
        values[row, 1:n] = length_to_value(torch.arange(n - 1, 0, -1, dtype=torch.float64), gamma)
    v2 = relative_length_credits(values, mask, gamma)[:, 0]
    v3 = unbiased_length_credits(values, mask, gamma)[:, 0]
    assert v2.tolist() == pytest.approx([0.68, -3.26], abs=0.01)
    assert float(v2.mean()) == pytest.approx(-1.29, abs=0.01)
    assert v3.tolist() == pytest.approx([0.97, -0.97], abs=0.01)
    # and every later token, deterministic, earns nothing under either
    assert unbiased_length_credits(values, mask, gamma)[:, 1:].abs().max() < 1e-12


def test_unbiased_credit_is_zero_on_padding_and_rejects_bad_gamma():
    values = torch.full((2, 4), -0.5)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    credits = unbiased_length_credits(values, mask, 0.9)
    assert credits[0, 2] == 0
    with pytest.raises(ValueError, match="gamma"):
        unbiased_length_credits(values, mask, 1.0)


def test_process_advantage_lambda_one_is_the_outcome_against_the_state_value():
    values = torch.tensor([[0.5, 0.6, 0.9, 0.9, 0.0], [0.5, 0.4, 0.2, 0.3, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]])
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sigma = torch.tensor([0.5, 0.5], dtype=torch.float64)
    terminated = torch.tensor([True, False])
    full = process_advantages(values, rewards, mask, sigma, lam=1.0, terminated=terminated)
    # terminated: (R - V(s_t)) / σ; truncated: no reward, (V(s_L) - V(s_t)) / σ
    torch.testing.assert_close(full[0], (1.0 - values[0, :4]) / 0.5)
    torch.testing.assert_close(full[1], (0.7 - values[1, :4]) / 0.5)
    one_step = process_advantages(values, rewards, mask, sigma, lam=0.0, terminated=terminated)
    torch.testing.assert_close(one_step[0], torch.tensor([0.1, 0.3, 0.0, 0.1], dtype=torch.float64) / 0.5)


def test_task_reward_scale_by_group_batch_and_none():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    group = task_reward_scale(rewards, 4, "group")
    assert group.tolist() == pytest.approx([0.5] * 4 + [0.1] * 4)  # a unanimous group is floored
    batch = task_reward_scale(rewards, 4, "batch")
    assert batch.tolist() == pytest.approx([math.sqrt(1.875 / 7)] * 8)
    assert task_reward_scale(rewards, 4, "none").tolist() == [1.0] * 8
    with pytest.raises(ValueError, match="groups of 3"):
        task_reward_scale(rewards, 3, "group")


def test_settled_mask_is_the_suffix_where_the_task_value_stops_moving():
    values = torch.tensor([[0.5, 0.5, 0.9, 0.92, 0.9, 1.0], [0.5, 0.9, 0.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    settled = settled_mask(values, mask, tolerance=0.05)
    assert settled.tolist() == [[False, False, True, True, True], [False, False, True, False, False]]
    assert settled_mask(values, mask, tolerance=1.0)[0].all()


# ------------------------------------------------------------------------------------------------ in the trainer


def _first_token_reward(completions, **kwargs):
    """1 when the completion starts with a digit: a reward the task critic below can read off the first token."""
    return [1.0 if c[:1].isdigit() else 0.0 for c in completions]


def _task_critic(tiny_model_dir, directory):
    """A task critic saved to disk whose value is 0.5 at every state (zero head weights, bias 0.5)."""
    from lenvm_rl import LengthValueModel
    from lenvm_rl.tiny import build_tiny_tokenizer

    critic = LengthValueModel.from_backbone(tiny_model_dir)
    with torch.no_grad():
        critic.head.summary.weight.zero_()
        critic.head.summary.bias.fill_(0.5)
    critic.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def _trainer(tiny_model_dir, tmp_path, **options):
    from datasets import Dataset

    from lenvm_rl import LenVMGRPOConfig, LenVMGRPOTrainer

    prompts = Dataset.from_list([{"prompt": f"add: {i} {i + 3}"} for i in range(16)])
    args = LenVMGRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=8,
                           num_generations=4, max_completion_length=16, use_cpu=True, bf16=False, report_to="none",
                           beta=0.0, seed=0, save_strategy="no", disable_tqdm=True, **options)
    torch.manual_seed(0)
    return LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=_first_token_reward, args=args,
                            train_dataset=prompts)


def test_trainer_adds_the_process_advantage_to_grpo_advantage(tiny_model_dir, tmp_path):
    critic = _task_critic(tiny_model_dir, tmp_path / "task-critic")
    trainer = _trainer(tiny_model_dir, tmp_path, length_mode="none", task_credit="critic",
                       task_critic_model_name_or_path=str(critic), task_credit_coef=2.0, scale_rewards="batch")
    rows = [{"prompt": f"add: {i} {i + 3}"} for i in range(2) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    mask, ids = output["completion_mask"], output["completion_ids"]
    assert output["advantages"].shape == mask.shape
    rewards = torch.tensor(_first_token_reward(trainer.processing_class.batch_decode(ids, skip_special_tokens=True)))
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask.bool()).any(dim=1)
    sigma = max(float(rewards.std()), 0.1)
    grpo = (rewards - rewards.view(2, 4).mean(dim=1).repeat_interleave(4)) / (float(rewards.std()) + 1e-4)
    for row in range(8):
        n = int(mask[row].sum())
        # a constant critic at 0.5: (R - 0.5) / σ on every token of a terminated row, 0 on a truncated one
        process = (float(rewards[row]) - 0.5) / sigma if terminated[row] else 0.0
        torch.testing.assert_close(output["advantages"][row, :n].float(),
                                   torch.full((n,), float(grpo[row]) + 2.0 * process), atol=1e-4, rtol=1e-4)


def test_group_centring_removes_a_stale_critics_shift_and_nothing_else():
    torch.manual_seed(0)
    values = torch.rand(8, 6, dtype=torch.float64)
    mask = torch.ones(8, 5, dtype=torch.int64)
    mask[3, 3:] = 0
    rewards = torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 0], dtype=torch.float64)
    sigma = torch.full((8,), 0.5, dtype=torch.float64)
    terminated = torch.ones(8, dtype=torch.bool)
    exact = process_advantages(values, rewards, mask, sigma, terminated=terminated)
    stale = process_advantages(values + 0.3, rewards, mask, sigma, terminated=terminated)  # off by 0.3 everywhere
    assert (stale - exact)[mask.bool()].mean() < -0.5  # uncentred, the stale critic pushes every token down
    centred_exact, centred_stale = group_centered(exact, mask, 4), group_centered(stale, mask, 4)
    torch.testing.assert_close(centred_stale, centred_exact)  # exactly invariant to the shift
    assert torch.allclose(centred_exact[:, 0].view(2, 4).sum(dim=1), torch.zeros(2, dtype=torch.float64))
    # within a row nothing moves but the row's constant offset: token-to-token differences are kept
    torch.testing.assert_close((centred_exact - exact)[:, 1:] * mask[:, 1:], (centred_exact - exact)[:, :1]
                               .expand(-1, 4) * mask[:, 1:])
    assert (centred_exact[~mask.bool()] == 0).all()
    with pytest.raises(ValueError, match="8 rows do not split into groups of 3"):
        group_centered(exact, mask, 3)


def test_trainer_centres_the_process_advantage_per_group(tiny_model_dir, tmp_path):
    """task_credit_centering: group through the real trainer: the same batch, the advantage differs from the
    uncentred one by each group's mean first-token process advantage, on every token of the group."""
    critic = _task_critic(tiny_model_dir, tmp_path / "task-critic")
    rows = [{"prompt": f"add: {i} {i + 3}"} for i in range(2) for _ in range(4)]
    outputs = {}
    for centering in ("none", "group"):
        trainer = _trainer(tiny_model_dir, tmp_path, length_mode="none", task_credit="critic",
                           task_critic_model_name_or_path=str(critic), scale_rewards="batch",
                           task_credit_centering=centering)
        torch.manual_seed(1)
        outputs[centering] = trainer._generate_and_score_completions(rows)
    plain, centred = outputs["none"], outputs["group"]
    torch.testing.assert_close(plain["completion_ids"], centred["completion_ids"])
    mask = plain["completion_mask"].bool()
    ids = plain["completion_ids"]
    rewards = torch.tensor(_first_token_reward(trainer.processing_class.batch_decode(ids, skip_special_tokens=True)))
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask).any(dim=1)
    sigma = max(float(rewards.std()), 0.1)
    first = torch.where(terminated, (rewards - 0.5) / sigma, torch.zeros(8))  # the constant 0.5 critic's A_0
    offsets = first.view(2, 4).mean(dim=1).repeat_interleave(4)
    assert offsets.abs().max() > 1e-3  # the constant critic is off for this batch: there is something to remove
    for row in range(8):
        n = int(mask[row].sum())
        torch.testing.assert_close((plain["advantages"][row, :n] - centred["advantages"][row, :n]).float(),
                                   torch.full((n,), float(offsets[row])), atol=1e-4, rtol=1e-4)
    from lenvm_rl import LenVMGRPOConfig

    with pytest.warns(UserWarning, match="ignores task_credit_centering='group'"):  # without task_credit: critic
        LenVMGRPOConfig(output_dir=str(tmp_path / "x"), use_cpu=True, bf16=False, length_mode="none",
                        task_credit_centering="group")
    with pytest.raises(ValueError, match="task_credit_centering must be one of"):
        LenVMGRPOConfig(output_dir=str(tmp_path / "x"), use_cpu=True, bf16=False, task_credit_centering="prompt")


def test_settled_charge_weights_length_credit_before_the_answer_settles(tiny_model_dir, tmp_path, make_constant_critic):
    """On a task critic whose value moves at every token (random head) and tolerance 0, only each completion's last
    token is settled: weight 1 before it is exactly length_charge all, weight 0 is not."""
    from lenvm_rl import LengthValueModel
    from lenvm_rl.tiny import build_tiny_tokenizer

    torch.manual_seed(3)
    moving = LengthValueModel.from_backbone(tiny_model_dir)
    moving.save_pretrained(tmp_path / "task-critic")
    build_tiny_tokenizer().save_pretrained(tmp_path / "task-critic")
    length_critic = tmp_path / "length-critic"
    make_constant_critic(-0.5).save_pretrained(length_critic)
    common = {"length_coef": 1.0, "length_gate": "none", "critic_model_name_or_path": str(length_critic),
              "length_lam": 1.0}
    settled = {"length_charge": "settled", "task_critic_model_name_or_path": str(tmp_path / "task-critic"),
               "settled_tolerance": 0.0}
    rows = [{"prompt": f"add: {i} {i + 3}"} for i in range(2) for _ in range(4)]
    outputs = []
    for options in ({}, {**settled, "presettle_length_weight": 1.0}, {**settled, "presettle_length_weight": 0.0}):
        trainer = _trainer(tiny_model_dir, tmp_path, **common, **options)
        torch.manual_seed(1)
        outputs.append(trainer._generate_and_score_completions(rows))
    torch.testing.assert_close(outputs[0]["completion_ids"], outputs[2]["completion_ids"])
    torch.testing.assert_close(outputs[0]["advantages"], outputs[1]["advantages"])
    assert (outputs[0]["advantages"] - outputs[2]["advantages"]).abs().max() > 1e-3


def test_task_credit_needs_a_task_critic_and_is_refused_in_ppo(tmp_path):
    from lenvm_rl import LenVMGRPOConfig, LenVMPPOConfig

    common = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none"}
    with pytest.raises(ValueError, match="task_credit='critic' needs a task critic"):
        LenVMGRPOConfig(length_mode="none", task_credit="critic", **common)
    with pytest.raises(FileNotFoundError, match="task_critic_model_name_or_path .* does not exist"):
        LenVMGRPOConfig(length_mode="none", task_credit="critic", task_critic_model_name_or_path=str(tmp_path / "x"),
                        **common)
    with pytest.raises(ValueError, match="task_credit_coef=2.0: not used"):
        LenVMGRPOConfig(length_mode="advantage", critic_model_name_or_path=str(tmp_path), task_credit_coef=2.0,
                        **common)
    with pytest.raises(ValueError, match="is a GRPO option"):
        LenVMPPOConfig(length_mode="none", task_credit="critic", task_critic_model_name_or_path=str(tmp_path),
                       **common)
    with pytest.raises(ValueError, match="length_estimator must be one of"):
        LenVMGRPOConfig(length_mode="none", length_estimator="exact", **common)


# ------------------------------------------------------------------------------------------------ in the study


def test_study_runs_the_v3_variants_and_reports_sample_efficiency(tmp_path):
    """The task-credit variants read the task critic the study pretrains; evaluations inside training leave the
    training itself unchanged (same final numbers as a study without them) and give the sample-efficiency table."""
    import json

    import yaml
    from test_study import TINY

    from lenvm_rl.cli import main

    methods = {"none": {"method": "none"}, "grpo_task": {"method": "grpo_task"},
               "kimi": {"method": "kimi", "grid": [0.4]},
               "lenvm_task": {"method": "lenvm_task", "grid": [1.0]},
               "lenvm_settled": {"method": "lenvm_settled", "grid": [1.0]}}
    finals = []
    for name, extra in (("curves", {"eval_at_steps": [1, 2]}), ("plain", {})):
        recipe = {**TINY, "output_dir": str(tmp_path / name), "methods": methods, "rl_steps": 3,
                  "task_critic_steps": 10, "eval_greedy": False, "comparator_method": "kimi/batch",
                  "headline_method": "lenvm_task/batch", **extra}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        assert main(["study", "--config", str(tmp_path / f"{name}.yaml")]) == 0
        results = sorted((json.loads(p.read_text()) for p in (tmp_path / name / "runs").rglob("result.json")),
                         key=lambda r: r["label"])
        # what each step generated and learned (no wall times): identical with and without the inner evaluations
        logs = [[{k: v for k, v in entry.items() if "time" not in k and "runtime" not in k and "per_second" not in k}
                 for entry in r["train_log"]] for r in results]
        finals.append([(r["label"], r["eval"]["correct"], r["eval"]["tokens"], log)
                       for r, log in zip(results, logs, strict=True)])
        if name == "curves":
            assert all(set(r["eval_at_steps"]) == {"1", "2"} for r in results)
            report = (tmp_path / name / "report.md").read_text()
            assert "## Sample efficiency" in report and "| lenvm_task/batch |" in report
            efficiency = json.loads((tmp_path / name / "report.json").read_text())["sample_efficiency"]
            assert efficiency["steps"] == [1, 2, 3] and efficiency["comparator"] == "kimi/batch"
            assert (tmp_path / name / "sample_efficiency.png").exists()
            log = next(r for r in results if r["label"] == "lenvm_task/batch")["train_log"]
            assert any("task_credit/advantage/std" in entry for entry in log)
    # the pre-registration restricted to v3 candidates: the ablation keeps the chosen method's settings, and the
    # confirmatory runs read the sweep's task critic
    from trl import TrlParser

    from lenvm_rl.study.runner import StudyConfig

    output = tmp_path / "confirmatory.yaml"
    assert main(["preregister", "--sweep", str(tmp_path / "curves"), "--output", str(output), "--token_level_methods",
                 "lenvm_task", "lenvm_settled", "--secondary", "grpo_task", "--eval_at_steps", "10", "25"]) == 0
    (config,) = TrlParser((StudyConfig,)).parse_args_and_config(["--config", str(output)])
    assert config.headline_method in ("lenvm_task/batch", "lenvm_settled/batch")
    assert config.preregistration["token_level_methods"] == ["lenvm_task", "lenvm_settled"]
    assert config.eval_at_steps == [10, 25] and "grpo_task" in config.methods
    ablation = config.methods["lenvm_seq/batch"]["options"]
    assert ablation["task_credit"] == "critic" and ablation["length_estimator"] == "unbiased"
    for label in (config.headline_method, "lenvm_seq/batch", "grpo_task"):
        assert config.methods[label]["options"]["task_critic_model_name_or_path"] == str(
            tmp_path / "curves" / "task-critic")
    assert main(["preregister", "--sweep", str(tmp_path / "curves"), "--output", str(tmp_path / "x.yaml"),
                 "--token_level_methods", "linear"]) == 2
    assert [label for label, *_ in finals[0]] == ["grpo_task", "kimi/batch", "lenvm_settled/batch",
                                                   "lenvm_task/batch", "none"]
    assert finals[0] == finals[1]


def digit_reward(prompts, completions, **kwargs):
    """1 when the prompt's digit (after '#') is at least 5: a reward the prompt alone decides."""
    return [1.0 if int(str(p).rsplit("#", 1)[1][0]) >= 5 else 0.0 for p in prompts]


def _digit_prompts(path, count):
    import json
    import random

    rng = random.Random(0)  # the same draws as make_synthetic_rollouts(seed=0)
    lines = []
    for _ in range(count):
        digit = rng.randint(1, 9)
        noise = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6)))
        lines.append(json.dumps({"prompt": f"{noise}#{digit}"}))
        for _ in range(4):
            length = 3 * digit + rng.randint(0, 2)
            for _ in range(length - 1):
                rng.choice("xyz ")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_task_critic_learns_what_decides_the_reward(tiny_model_dir, tmp_path, synthetic_rollouts, capsys):
    import json

    from lenvm_rl.cli import main
    from lenvm_rl.tiny import build_tiny_tokenizer

    synthetic_rollouts(tmp_path / "rollouts", build_tiny_tokenizer(), num_prompts=40)
    prompts = _digit_prompts(tmp_path / "prompts.jsonl", 40)
    common = ["fit-task-critic", "--policy", str(tiny_model_dir), "--rollouts", str(tmp_path / "rollouts"),
              "--reward_funcs", "test_length_v3:digit_reward", "--max_steps", "150", "--device", "cpu"]
    assert main([*common, "--dataset", str(prompts), "--output_dir", str(tmp_path / "critic")]) == 0
    metrics = json.loads((tmp_path / "critic" / "metrics.json").read_text())
    assert metrics["last_loss"] < metrics["first_loss"]
    assert metrics["mse_vs_constant"] < 0.7, metrics
    assert (tmp_path / "critic" / "config.json").exists() and not (tmp_path / "critic.tmp").exists()
    # the wrong prompt file (fewer prompts than the rollouts index) is named before anything is trained
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(prompts.read_text().splitlines()[:5]) + "\n")
    assert main([*common, "--dataset", str(short), "--output_dir", str(tmp_path / "critic2")]) == 2
    assert "the dataset holds 5 prompts" in capsys.readouterr().err
    assert not (tmp_path / "critic2").exists()
