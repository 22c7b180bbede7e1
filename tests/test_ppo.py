"""LenVM-PPO: the task GAE by hand, the seam (TRL's group advantage replaced by critic GAE + the LenVM term), the
critic and the policy learn, the length term shortens completions, save → resume restores the critic, and bad
input fails before any generation."""

import shutil

import pytest
import torch
from conftest import ppo_batch_by_hand
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoTokenizer

from lenvm_rl import (
    LengthValueModel,
    LenVMPPOConfig,
    LenVMPPOTrainer,
    length_advantages,
    potential_shaping,
    task_gae,
)
from lenvm_rl.cli import main
from lenvm_rl.tiny import build_tiny_tokenizer, save_tiny_causal_lm

COMMON = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=24, learning_rate=1e-3,
              use_cpu=True, bf16=False, report_to="none", logging_steps=1, beta=0.0, seed=0, save_strategy="no",
              disable_tqdm=True, length_mode="none")


def letter_reward(prompts, completions, **kwargs):
    """1 for prompts of a's, 0 for prompts of z's: known from the prompt alone, so a critic can predict it."""
    return [float(p.startswith("a")) for p in prompts]


def digit_fraction_reward(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


@pytest.fixture(scope="module")
def prompts():
    return Dataset.from_list([{"prompt": f"number {i}"} for i in range(64)])


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]



# ---------------------------------------------------------------------- the math


def test_task_gae_matches_a_hand_computed_example():
    values = torch.tensor([[0.5, 0.2, -0.1, 0.3], [0.1, 0.4, 9.0, 7.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # γ = 0.9, λ = 0.5, row 0 terminated (V(s_3) = 0):
    #   δ_2 = 1 - (-0.1) = 1.1, δ_1 = 0.9·(-0.1) - 0.2 = -0.29, δ_0 = 0.9·0.2 - 0.5 = -0.32
    #   A_2 = 1.1, A_1 = -0.29 + 0.45·1.1 = 0.205, A_0 = -0.32 + 0.45·0.205 = -0.22775
    # row 1 terminated at L = 2 (its column 2 is terminal whatever it holds): δ_1 = 2 - 0.4 = 1.6,
    #   δ_0 = 0.9·0.4 - 0.1 = 0.26, A_0 = 0.26 + 0.45·1.6 = 0.98
    advantages, returns = task_gae(values, rewards, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[-0.22775, 0.205, 1.1], [0.98, 1.6, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.27225, 0.405, 1.0], [1.08, 2.0, 0.0]]))
    # row 0 truncated: bootstrap from V(s_3) = 0.3: δ_2 = 1 + 0.27 + 0.1 = 1.37, A_1 = -0.29 + 0.45·1.37
    advantages, _ = task_gae(values, rewards, mask, 0.9, 0.5, terminated=torch.tensor([False, True]))
    torch.testing.assert_close(advantages[0], torch.tensor([-0.32 + 0.45 * 0.3265, 0.3265, 1.37]))
    # γ = λ = 1: A_t = R - V(s_t), the Monte-Carlo advantage
    advantages, _ = task_gae(values, rewards, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.8, 1.1], [1.9, 1.6, 0.0]]))


def test_task_gae_generalizes_the_length_advantage():
    torch.manual_seed(0)
    values = -torch.rand(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    terminated = torch.tensor([True, False, True])
    rewards = torch.full(mask.shape, -(1 - 0.9)) * mask
    expected = length_advantages(values, mask, 0.9, 0.7, terminated)
    for got, want in zip(task_gae(values, rewards, mask, 0.9, 0.7, terminated), expected, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="gamma"):
        task_gae(values, rewards, mask, gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        task_gae(values, rewards, mask, lam=-0.1)


# ---------------------------------------------------------------------- the seam


def test_advantages_are_task_gae_plus_the_length_term(make_constant_critic, tiny_model_dir, prompts, tmp_path):
    args = LenVMPPOConfig(output_dir=str(tmp_path), max_steps=1, gamma_task=0.95, lam_task=0.8,
                          whiten_task_advantages=False, **{**COMMON, "length_mode": "advantage"},
                          length_coef=2.0, length_lam=0.9, length_gate="none", length_units="value")
    trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=digit_fraction_reward, args=args,
                              train_dataset=prompts, critic=make_constant_critic(-0.4),
                              critic_processing_class=build_tiny_tokenizer())
    before = {k: v.clone() for k, v in trainer.task_critic.state_dict().items()}
    trainer.model.train()  # the training path: the critic is fit on the batch after its values are read
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    ids, mask = output["completion_ids"], output["completion_mask"]
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask.bool()).any(dim=1)
    # the task values the advantages were computed with are the critic's logits *before* this batch's update
    after = {k: v.clone() for k, v in trainer.task_critic.state_dict().items()}
    trainer.task_critic.load_state_dict(before)
    with torch.no_grad():
        values = trainer.task_critic.values_for_completions(output["prompt_ids"], output["prompt_mask"], ids, mask,
                                                            read="logits")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the critic should have been updated"
    texts = trainer.processing_class.batch_decode([i[m.bool()] for i, m in zip(ids, mask, strict=True)],
                                                  skip_special_tokens=True)
    lengths = mask.sum(dim=1)
    token_rewards = torch.zeros(mask.shape)
    token_rewards[torch.arange(8), lengths - 1] = torch.tensor(digit_fraction_reward(texts))
    token_rewards *= terminated[:, None]  # truncated_task_value="bootstrap": a cut completion earns no reward yet
    assert 0 < int(terminated.sum()) < 8, "the batch should mix terminated and truncated completions"
    task, _ = task_gae(values, token_rewards, mask, 0.95, 0.8, terminated)
    length_term, _ = length_advantages(torch.full(values.shape, -0.4), mask, 0.9, 0.9, terminated)
    assert output["advantages"].shape == mask.shape
    torch.testing.assert_close(output["advantages"], task + 2.0 * length_term, atol=1e-5, rtol=1e-5)


def test_shaping_enters_the_rewards_before_the_task_gae_and_telescopes(tiny_model_dir, prompts, tmp_path):
    args = LenVMPPOConfig(output_dir=str(tmp_path), max_steps=1, gamma_task=1.0, lam_task=0.9,
                          whiten_task_advantages=False, **{**COMMON, "length_mode": "shaping"}, length_coef=0.5)
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=digit_fraction_reward, args=args,
                              train_dataset=prompts, critic=critic, critic_processing_class=build_tiny_tokenizer())
    rows = [{"prompt": prompts[i]["prompt"]} for i in range(2) for _ in range(4)]
    trainer.model.eval()  # no critic update: the values below are the ones the GAE used
    output = trainer._generate_and_score_completions(rows)
    mask, terminated, task_values, potential, rewards = ppo_batch_by_hand(trainer, critic, output,
                                                                          digit_fraction_reward)
    shaping = potential_shaping(potential, mask, 1.0, terminated)
    expected, _ = task_gae(task_values, rewards + 0.5 * shaping, mask, 1.0, 0.9, terminated)
    torch.testing.assert_close(output["advantages"], expected, atol=1e-5, rtol=1e-5)
    # with γ_task = 1 the shaping of a terminated completion sums to -Φ(s_0): no completion of a prompt gains by
    # being shorter or longer, so the task optimum is unchanged
    done = terminated.nonzero().flatten()
    assert len(done) > 0
    torch.testing.assert_close(shaping[done].sum(dim=1), -potential[done, 0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="length_gate='success'.*not used with length_mode='shaping'"):
        LenVMPPOConfig(output_dir=str(tmp_path), **{**COMMON, "length_mode": "shaping"}, length_gate="success")
    with pytest.raises(ValueError, match="refused in shaping mode"):
        LenVMPPOConfig(output_dir=str(tmp_path), **{**COMMON, "length_mode": "shaping"}, critic_refresh=True)


def test_warmup_zeroes_the_policy_advantages(tiny_model_dir, prompts, tmp_path):
    args = LenVMPPOConfig(output_dir=str(tmp_path), max_steps=2, critic_warmup_steps=2, **COMMON)
    trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=digit_fraction_reward, args=args,
                              train_dataset=prompts)
    policy = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert logged(trainer, "ppo/critic_warmup") == [1.0, 1.0]
    assert len(logged(trainer, "ppo/value_loss")) == 2
    for name, tensor in trainer.model.state_dict().items():  # beta = 0 and zero advantages: the policy stays put
        torch.testing.assert_close(tensor, policy[name], msg=name)


# ---------------------------------------------------------------------- learning


def test_task_critic_learns_a_predictable_reward(tiny_model_dir, tmp_path):
    # The reward is fixed by the prompt ("aaaa…" pays 1, "zzzz…" pays 0) and the policy is frozen, so the critic can
    # explain all of it; completions cut at 8 tokens are final (truncated_task_value="terminal").
    prompts = Dataset.from_list([{"prompt": ("a" if i % 2 else "z") * 8} for i in range(64)])
    args = LenVMPPOConfig(output_dir=str(tmp_path), max_steps=16, lam_task=1.0, truncated_task_value="terminal",
                          task_critic_learning_rate=1e-3, task_critic_epochs=2, task_critic_batch_size=8,
                          **{**COMMON, "learning_rate": 0.0, "max_completion_length": 8,
                             "per_device_train_batch_size": 16, "num_generations": 2})
    trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=letter_reward, args=args,
                              train_dataset=prompts)
    trainer.train()
    losses, explained = logged(trainer, "ppo/value_loss"), logged(trainer, "ppo/explained_variance")
    assert len(losses) == 16 and len(logged(trainer, "ppo/value_clipfrac")) == 16
    assert sum(losses[-4:]) / 4 < 0.1 * sum(losses[:4]) / 4, losses
    assert sum(explained[-4:]) / 4 > 0.9 and sum(explained[:2]) / 2 < 0.5, explained


def test_policy_reward_improves(tiny_model_dir, prompts, tmp_path):
    # the tiny policy rarely emits EOS within 24 tokens, so cut completions keep their reward ("terminal")
    args = LenVMPPOConfig(output_dir=str(tmp_path), max_steps=30, task_critic_learning_rate=1e-3,
                          truncated_task_value="terminal", **{**COMMON, "learning_rate": 3e-3})
    trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=digit_fraction_reward, args=args,
                              train_dataset=prompts)
    trainer.train()
    rewards = logged(trainer, "reward")
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, rewards


def test_length_coef_shortens_completions(tiny_model_dir, prompts, tmp_path):
    critic_dir = tmp_path / "lenvm"
    torch.manual_seed(0)
    LengthValueModel.from_backbone(tiny_model_dir, gamma=0.95).save_pretrained(critic_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(critic_dir)

    def final_length(coef):
        args = LenVMPPOConfig(output_dir=str(tmp_path / str(coef)), max_steps=24, length_coef=coef,
                              length_gate="none", critic_model_name_or_path=str(critic_dir),
                              # constant reward, no whitening, cut texts final: the task part carries no length
                              # signal, so any difference comes from the LenVM term
                              whiten_task_advantages=False, truncated_task_value="terminal",
                              **{**COMMON, "length_mode": "advantage", "max_completion_length": 48,
                                 "logging_steps": 4})
        trainer = LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                                  train_dataset=prompts)
        trainer.train()
        return logged(trainer, "completions/mean_length")

    baseline, shortened = final_length(0.0), final_length(2.0)
    assert shortened[-1] < 0.75 * baseline[-1], (baseline, shortened)


# ---------------------------------------------------------------------- saving and resuming


def test_save_and_resume_restore_the_task_critic(tiny_model_dir, prompts, tmp_path):
    def make(max_steps):
        args = LenVMPPOConfig(output_dir=str(tmp_path / "run"), max_steps=max_steps, save_strategy="steps",
                              save_steps=2, task_critic_learning_rate=1e-3,
                              **{k: v for k, v in COMMON.items() if k != "save_strategy"})
        return LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=digit_fraction_reward, args=args,
                               train_dataset=prompts)

    first = make(2)
    first.train()
    first.save_model()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "task_critic" / "optimizer.pt").exists()
    assert (tmp_path / "run" / "task_critic" / "model.safetensors").exists()
    weights = {k: v.clone() for k, v in first.task_critic.state_dict().items()}
    saved = load_file(str(checkpoint / "task_critic" / "model.safetensors"))
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, weights[name], msg=name)
    optimizer_state = first.task_critic_optimizer.state_dict()

    resumed = make(2)
    assert any(not torch.equal(v, weights[k]) for k, v in resumed.task_critic.state_dict().items())
    resumed.create_optimizer_and_scheduler(num_training_steps=2)
    resumed._load_optimizer_and_scheduler(str(checkpoint))  # the seam Trainer.train(resume_from_checkpoint) calls
    for name, tensor in resumed.task_critic.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], msg=name)
    restored = resumed.task_critic_optimizer.state_dict()
    assert restored["param_groups"] == optimizer_state["param_groups"]
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(restored["state"][index][key], value)

    continued = make(4)
    continued.train(resume_from_checkpoint=str(checkpoint))
    # one critic update per generation batch here; the log history also holds the checkpoint's steps 1-2
    updates = sum(1 for e in continued.state.log_history if "ppo/value_loss" in e and e["step"] > 2)
    assert continued.state.global_step == 4 and updates == 2
    steps = [s["step"] for s in continued.task_critic_optimizer.state_dict()["state"].values()]
    assert all(float(step) == float(optimizer_state["state"][0]["step"]) + updates for step in steps)

    shutil.rmtree(checkpoint / "task_critic")
    with pytest.raises(FileNotFoundError, match="task_critic"):
        make(3).train(resume_from_checkpoint=str(checkpoint))


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_generations": 1}, "at least 2 generations"),
        ({"per_device_train_batch_size": 6}, "num_generations"),
        ({"gamma_task": 0.0}, "gamma_task"),
        ({"lam_task": 2.0}, "lam_task"),
        ({"vf_coef": float("nan")}, "vf_coef"),
        ({"task_critic_epochs": 0}, "task_critic_epochs"),
        ({"critic_warmup_steps": -1}, "critic_warmup_steps"),
    ],
)
def test_bad_configurations(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        LenVMPPOConfig(output_dir=str(tmp_path), **{**COMMON, **overrides})


def test_startup_errors_come_before_generation(tiny_model_dir, prompts, tmp_path, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation must not start")

    monkeypatch.setattr(LenVMPPOTrainer, "_generate_and_score_completions", no_generation)
    args = LenVMPPOConfig(output_dir=str(tmp_path), max_steps=1, **COMMON)
    for missing in (None, []):
        with pytest.raises(ValueError, match="at least one reward function"):
            LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=missing, args=args, train_dataset=prompts)
    narrow = save_tiny_causal_lm(tmp_path / "narrow", hidden_size=32)
    with pytest.raises(ValueError, match="hidden size"):
        LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                        task_critic=str(narrow))
    other_tokenizer = build_tiny_tokenizer()
    other_tokenizer.add_tokens(["<|extra|>"])
    with pytest.raises(ValueError, match="tokenizer differs"):
        LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                        task_critic_processing_class=other_tokenizer)
    small = save_tiny_causal_lm(tmp_path / "small-vocab", vocab_size=50)
    with pytest.raises(ValueError, match="embeds only 50"):
        LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                        task_critic=LengthValueModel.from_backbone(small))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LenVMPPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args, train_dataset=prompts,
                        task_critic="/no/such/critic")


# ---------------------------------------------------------------------- the recipe


@pytest.mark.parametrize("name", ["qwen2.5-0.5b_gsm8k_lenvm_ppo", "qwen2.5-0.5b_gsm8k_lenvm_shaping"])
def test_ppo_recipe_with_the_tiny_override(tmp_path, tiny_model_dir, monkeypatch, name):
    import shutil

    from test_recipes import ROOT, tiny_grpo_override

    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "tiny-policy")
    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "runs" / "ppo"
    recipe = ROOT / "recipes" / "ppo" / f"{name}.yaml"
    assert main(["ppo", "--config", str(recipe), *tiny_grpo_override(tmp_path), "--critic_warmup_steps", "1",
                 "--task_critic_batch_size", "2", "--output_dir", str(output_dir)]) == 0
    assert (output_dir / "adapter_config.json").exists()  # LoRA policy saved as an adapter
    assert (output_dir / "task_critic" / "model.safetensors").exists()
    assert (output_dir / "checkpoint-2" / "task_critic" / "optimizer.pt").exists()


def test_pretrain_task_critic_learns_the_return_from_the_prompt(tiny_model_dir):
    """Rollouts whose reward is set by the prompt (a… → 1, z… → 0): after offline pretraining the critic's values at
    every position separate the two; truncated rows are left out; mismatched inputs are refused."""
    from lenvm_rl.trainer.ppo import pretrain_task_critic

    tokenizer = build_tiny_tokenizer()
    rows, rewards = [], []
    for index in range(16):
        text = ("a" if index % 2 else "z") * 3 + f" {index}"
        completion = tokenizer(f"ok {index}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"prompt_ids": tokenizer(text, add_special_tokens=False)["input_ids"],
                     "completion_ids": completion, "terminated": True})
        rewards.append(float(index % 2))
    rows.append({**rows[0], "terminated": False})
    rewards.append(5.0)  # a truncated row: its return is unknown and must not be learned
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir)
    losses = pretrain_task_critic(critic, rows, rewards, tokenizer.pad_token_id, steps=60, batch_size=8,
                                  learning_rate=3e-3)
    assert sum(losses[-10:]) / 10 < 0.25 * losses[0]
    from lenvm_rl import pad_prompt_completion_batch

    with torch.no_grad():
        values = critic.values_for_completions(*pad_prompt_completion_batch(rows[:16], tokenizer.pad_token_id),
                                               read="logits")[:, 0]
    assert float(values[1::2].mean()) > 0.7 and float(values[0::2].mean()) < 0.3
    with pytest.raises(ValueError, match="17 rollouts but 3 rewards"):
        pretrain_task_critic(critic, rows, rewards[:3], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="no terminated rollout"):
        pretrain_task_critic(critic, rows[-1:], rewards[-1:], tokenizer.pad_token_id)
