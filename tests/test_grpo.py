"""LenVM-GRPO: the `none` mode is TRL's GRPO bit for bit, the token advantages are the math module's, a strong
length coefficient shortens completions, and bad configurations fail before any generation."""

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from lenvm_rl import (
    LengthValueModel,
    LenVMGRPOConfig,
    LenVMGRPOTrainer,
    length_advantages,
    relative_length_advantages,
)
from lenvm_rl.tiny import build_tiny_tokenizer, save_tiny_causal_lm

COMMON = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=24, learning_rate=1e-3,
              use_cpu=True, bf16=False, report_to="none", logging_steps=1, beta=0.0, seed=0, save_strategy="no",
              disable_tqdm=True)


def parity_reward(completions, **kwargs):
    return [float(len(c) % 2) for c in completions]


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


@pytest.fixture(scope="module")
def prompts():
    return Dataset.from_list([{"prompt": f"add: {i} {i + 3}"} for i in range(32)])


@pytest.fixture(scope="module")
def critic_dir(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("critic")
    torch.manual_seed(0)
    LengthValueModel.from_backbone(tiny_model_dir, gamma=0.95).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path



def test_none_mode_reproduces_grpo_bit_for_bit(tiny_model_dir, prompts, tmp_path):
    runs = []
    for trainer_class, config_class, extra in ((GRPOTrainer, GRPOConfig, {}),
                                                (LenVMGRPOTrainer, LenVMGRPOConfig, {"length_mode": "none"})):
        args = config_class(output_dir=str(tmp_path / trainer_class.__name__), max_steps=3, **COMMON, **extra)
        trainer = trainer_class(model=str(tiny_model_dir), reward_funcs=parity_reward, args=args,
                                train_dataset=prompts)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs.append((losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    (losses_a, params_a), (losses_b, params_b) = runs
    assert len(losses_a) == 3 and losses_a == losses_b
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name


def test_token_advantages_match_the_math_module(make_constant_critic, tiny_model_dir, prompts, tmp_path):
    value = -0.4
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_mode="advantage", length_coef=2.0,
                           length_lam=0.8, length_gate="none", length_units="value", **COMMON)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                               train_dataset=prompts, critic=make_constant_critic(value),
                               critic_processing_class=build_tiny_tokenizer())
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    mask, ids = output["completion_mask"], output["completion_ids"]
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask.bool()).any(dim=1)
    values = torch.full((mask.shape[0], mask.shape[1] + 1), value)
    expected, _ = length_advantages(values, mask, 0.9, 0.8, terminated)
    # constant task reward: every group-normalized task advantage is 0, so A = s · A_len exactly
    torch.testing.assert_close(output["advantages"], 2.0 * expected, atol=1e-5, rtol=1e-5)
    lengths = mask.sum(dim=1)
    done = terminated.nonzero().flatten().tolist()
    pairs = [(a, b) for a in done for b in done if lengths[a] < lengths[b]]
    assert pairs, "the tiny policy should produce terminated completions of different lengths"
    for short, long in pairs:
        assert output["advantages"][short, 0] > output["advantages"][long, 0]


def test_relative_token_advantages_match_the_math_module(tiny_model_dir, prompts, tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_coef=1.5, length_lam=0.5, length_gate="none",
                           **COMMON)
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                               train_dataset=prompts, critic=critic, critic_processing_class=build_tiny_tokenizer())
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    mask, ids = output["completion_mask"], output["completion_ids"]
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask.bool()).any(dim=1)
    with torch.no_grad():
        values = critic.values_for_completions(output["prompt_ids"], output["prompt_mask"], ids, mask)
    expected = relative_length_advantages(values, mask, 0.9, group_size=4, lam=0.5, terminated=terminated)
    # constant task reward: every group-normalized task advantage is 0, so A = s · A_len exactly
    torch.testing.assert_close(output["advantages"], 1.5 * expected, atol=1e-5, rtol=1e-5)
    logged = trainer._metrics["train" if trainer.model.training else "eval"]
    assert "length/outcome_mean" in logged and "length/outcome_scale" in logged


def test_gate_pays_length_credit_only_to_successful_completions(make_constant_critic, tiny_model_dir, prompts,
                                                                tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_mode="advantage", length_coef=1.0,
                           length_gate="success", length_gate_threshold=1.0, length_units="value", **COMMON)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=parity_reward, args=args,
                               train_dataset=prompts, critic=make_constant_critic(-0.5),
                               critic_processing_class=build_tiny_tokenizer())
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    rewards = trainer._last_rewards_per_func[:, 0]
    mask, ids = output["completion_mask"], output["completion_ids"]
    # the seam: the recorded task rewards are the reward function's outputs for these completions
    texts = trainer.processing_class.batch_decode([i[m.bool()] for i, m in zip(ids, mask, strict=True)],
                                                  skip_special_tokens=True)
    assert rewards.tolist() == parity_reward(texts)
    grouped = rewards.view(-1, 4)
    task = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask.bool()).any(dim=1)
    length_term, _ = length_advantages(torch.full((8, mask.shape[1] + 1), -0.5), mask, 0.9, 0.95, terminated)
    passed = (rewards >= 1.0).float()
    assert 0 < passed.sum() < 8, "the batch should mix successes and failures"
    expected = (task[:, None] + passed[:, None] * length_term) * mask
    torch.testing.assert_close(output["advantages"] * mask, expected, atol=1e-4, rtol=1e-4)


def test_strong_length_coef_shortens_completions(tiny_model_dir, critic_dir, prompts, tmp_path):
    def final_length(coef):
        args = LenVMGRPOConfig(output_dir=str(tmp_path / str(coef)), max_steps=16, length_mode="advantage",
                               length_coef=coef, length_gate="none", critic_model_name_or_path=str(critic_dir),
                               **{**COMMON, "max_completion_length": 48, "logging_steps": 4})
        trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                                   train_dataset=prompts)
        trainer.train()
        return [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]

    baseline, shortened = final_length(0.0), final_length(2.0)
    assert shortened[-1] < 0.75 * baseline[-1], (baseline, shortened)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"length_coef": float("nan")}, ValueError, "length_coef"),
        ({"length_mode": "shaping"}, ValueError, "not a GRPO mode"),
        ({"length_units": "tokens"}, ValueError, "length_units"),
        ({"length_scale": "prompt"}, ValueError, "length_scale"),
        ({"length_gate_failed": "half"}, ValueError, "length_gate_failed"),
        ({"length_gate_reward_funcs": []}, ValueError, "length_gate_reward_funcs is empty"),
        ({"critic_model_name_or_path": "/no/such/critic"}, FileNotFoundError, "does not exist"),
        ({"length_mode": "sideways"}, ValueError, "length_mode"),
        ({"length_gate": "maybe"}, ValueError, "length_gate"),
        ({"length_lam": 1.5}, ValueError, "length_lam"),
    ],
)
def test_bad_configurations(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        LenVMGRPOConfig(output_dir=str(tmp_path), **{**COMMON, **overrides})


def test_startup_errors_come_before_generation(tiny_model_dir, critic_dir, prompts, tmp_path, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation must not start")

    monkeypatch.setattr(LenVMGRPOTrainer, "_generate_and_score_completions", no_generation)
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, **COMMON)
    with pytest.raises(ValueError, match="needs a critic"):
        LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts)
    gammaless = LengthValueModel.from_backbone(tiny_model_dir)
    with pytest.raises(ValueError, match="no gamma"):
        LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                         critic=gammaless)
    other_tokenizer = build_tiny_tokenizer()
    other_tokenizer.add_tokens(["<|extra|>"])
    with pytest.raises(ValueError, match="tokenizer differs"):
        LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                         critic=str(critic_dir), critic_processing_class=other_tokenizer)
    small = save_tiny_causal_lm(tmp_path / "small-vocab", vocab_size=50)
    with pytest.raises(ValueError, match="embeds only 50"):
        LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                         critic=LengthValueModel.from_backbone(small, gamma=0.9))


def test_coefficient_schedule_and_callable(tiny_model_dir, critic_dir, prompts, tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=4, length_coef=2.0, length_coef_schedule="linear_warmup",
                           length_coef_warmup_steps=4, length_gate="none", critic_model_name_or_path=str(critic_dir),
                           **COMMON)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                               train_dataset=prompts)
    trainer.train()
    coefs = [e["length/coef"] for e in trainer.state.log_history if "length/coef" in e]
    assert coefs == [0.0, 0.5, 1.0, 1.5]
    logged = {k for e in trainer.state.log_history for k in e}
    for key in ("length/advantage/mean", "length/advantage/std", "critic/predicted_length",
                "length/truncated_fraction"):
        assert key in logged
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=copy.deepcopy(args),
                               train_dataset=prompts, length_coef_fn=lambda step: 0.25)
    assert trainer.current_length_coef() == 0.25


def test_online_refresh_moves_the_critic_toward_realized_lengths(tiny_model_dir, critic_dir, prompts, tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=6, length_gate="none", critic_refresh=True,
                           critic_learning_rate=3e-3, critic_model_name_or_path=str(critic_dir),
                           **{**COMMON, "learning_rate": 0.0})
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                               train_dataset=prompts)
    trainer.train()
    losses = [e["critic/refresh_loss"] for e in trainer.state.log_history if "critic/refresh_loss" in e]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses


def format_reward(completions, **kwargs):
    """Pays every completion that is not empty: wrong but well-formatted answers pass a gate on the summed reward."""
    return [1.0 if c.strip() else 0.0 for c in completions]


def test_gate_reads_only_the_correctness_reward_functions(make_constant_critic, tiny_model_dir, prompts, tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_gate_threshold=1.0,
                           length_gate_reward_funcs=["parity_reward"], **COMMON)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=[parity_reward, format_reward], args=args,
                               train_dataset=prompts, critic=make_constant_critic(-0.5),
                               critic_processing_class=build_tiny_tokenizer())
    assert trainer.gate_reward_indices == [0]
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    trainer._generate_and_score_completions(rows)
    rewards = trainer._last_rewards_per_func
    passed = trainer._gate(8, "train")
    assert passed.tolist() == (rewards[:, 0] >= 1.0).tolist()
    # the summed reward would have let every non-empty (wrong) completion through
    assert bool(((rewards.sum(dim=1) >= 1.0) & ~passed).any())
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_gate_reward_funcs=["no_such_reward"],
                           **COMMON)
    with pytest.raises(ValueError, match="'no_such_reward' is not one of the reward functions"):
        LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=[parity_reward, format_reward], args=args,
                         train_dataset=prompts, critic=make_constant_critic(-0.5),
                         critic_processing_class=build_tiny_tokenizer())


def never_correct(completions, **kwargs):
    return [0.0] * len(completions)


def test_gate_that_never_passes_warns(make_constant_critic, tiny_model_dir, prompts, tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=5, **{**COMMON, "per_device_train_batch_size": 4})
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=never_correct, args=args,
                               train_dataset=prompts, critic=make_constant_critic(-0.5),
                               critic_processing_class=build_tiny_tokenizer())
    with pytest.warns(UserWarning, match="no completion has passed the length gate for 5 generation batches"):
        trainer.train()
    fractions = [e["length/gate_pass_fraction"] for e in trainer.state.log_history if "length/gate_pass_fraction" in e]
    assert fractions and max(fractions) == 0.0


@pytest.mark.parametrize(
    "overrides, ignored",
    [
        ({"length_units": "relative", "whiten_length_advantages": True}, ["whiten_length_advantages"]),
        ({"length_units": "value", "length_credit": "sequence"}, ["length_credit"]),
        ({"length_units": "value", "length_scale": "group"}, ["length_scale"]),
        ({"length_gate": "none", "length_gate_threshold": 0.5}, ["length_gate_threshold"]),
        ({"length_gate": "none", "length_gate_failed": "worst"}, ["length_gate_failed"]),
        ({"length_gate": "none", "length_gate_reward_funcs": ["x"]}, ["length_gate_reward_funcs"]),
        ({"critic_learning_rate": 1e-3}, ["critic_learning_rate"]),
        ({"length_coef_warmup_steps": 10}, ["length_coef_warmup_steps"]),
    ],
)
def test_options_a_mode_ignores_are_refused(tmp_path, overrides, ignored):
    with pytest.raises(ValueError, match="not used with length_mode='advantage'") as error:
        LenVMGRPOConfig(output_dir=str(tmp_path), **{**COMMON, **overrides})
    for name in ignored:
        assert name in str(error.value)


def test_none_mode_warns_about_the_options_it_ignores(tmp_path):
    with pytest.warns(UserWarning, match=r"ignores length_coef=3\.0, length_units='value'"):
        LenVMGRPOConfig(output_dir=str(tmp_path), length_mode="none", length_coef=3.0, length_units="value", **COMMON)
    config = LenVMGRPOConfig(output_dir=str(tmp_path), length_mode="none", **COMMON)
    assert config.ignored_options() == []


def test_critic_scores_in_eval_mode_even_with_dropout(tmp_path, prompts):
    """A GPT-2 backbone has dropout; in refresh mode the critic used to score its first batch in train mode."""
    policy = save_tiny_causal_lm(tmp_path / "gpt2", "gpt2", seed=0)
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(policy, gamma=0.9)
    assert critic.backbone.config.resid_pdrop > 0
    args = LenVMGRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, critic_refresh=True,
                           critic_learning_rate=1e-3, **COMMON)
    trainer = LenVMGRPOTrainer(model=str(policy), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                               critic=critic, critic_processing_class=build_tiny_tokenizer())
    batch = build_tiny_tokenizer()(["add: 1 2", "add: 3 4"], padding=True, padding_side="left", return_tensors="pt")
    completion = torch.tensor([[20, 21, 1], [22, 1, 0]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    unwrap = trainer.critic
    unwrap.train()  # as a refresh step leaves it if anything goes wrong
    first = trainer.score_lengths(batch["input_ids"], batch["attention_mask"], completion, completion_mask)
    second = trainer.score_lengths(batch["input_ids"], batch["attention_mask"], completion, completion_mask)
    assert torch.equal(first, second)
    assert not unwrap.training


def test_no_args_builds_a_default_config_like_grpo_trainer(tiny_model_dir, prompts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="no args and no critic: it runs as plain GRPO"):
        trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=parity_reward, train_dataset=prompts)
    assert isinstance(trainer.args, LenVMGRPOConfig) and trainer.args.length_mode == "none"
    assert trainer.args.output_dir.endswith("-LenVM-GRPO") and trainer.length_critic is None


def test_gate_on_a_reward_model_with_the_default_threshold_is_refused(make_constant_critic, tiny_model_dir, prompts,
                                                                      tmp_path):
    from transformers import AutoModelForSequenceClassification

    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_units="value", **COMMON)
    with pytest.raises(ValueError, match="whose scores are continuous"):
        LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=reward_model, args=args, train_dataset=prompts,
                         critic=make_constant_critic(-0.5), critic_processing_class=build_tiny_tokenizer(),
                         reward_processing_classes=AutoTokenizer.from_pretrained(tiny_model_dir))
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_units="value", length_gate_threshold=0.3,
                           **COMMON)
    LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=reward_model, args=args, train_dataset=prompts,
                     critic=make_constant_critic(-0.5), critic_processing_class=build_tiny_tokenizer(),
                     reward_processing_classes=AutoTokenizer.from_pretrained(tiny_model_dir))


def test_outcome_drift_is_measured_from_the_first_batch_and_warns_when_stale(tiny_model_dir, prompts, tmp_path):
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=1, length_gate="none", **COMMON)
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                               train_dataset=prompts, critic=critic, critic_processing_class=build_tiny_tokenizer())
    trainer.model.train()
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    trainer._generate_and_score_completions(rows)
    trainer._generate_and_score_completions(rows)
    logged = trainer._metrics["train"]
    first, second = logged["length/outcome_mean"][:2]
    assert logged["length/outcome_drift"][:2] == pytest.approx([0.0, second - first])
    with pytest.warns(UserWarning, match="the critic is going stale"):
        trainer._track_staleness(trainer._first_outcome_mean + 0.3)
