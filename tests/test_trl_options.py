"""TRL compatibility as a tested promise: LenVMGRPOTrainer under the GRPO options users combine with it.

Each case trains with a constant task reward, so GRPO's own advantage is exactly 0 and the LenVM length term is the
only learning signal: the policy's weights move if and only if the length term reaches the loss. Dropping the term
(or zeroing it by misalignment) leaves the weights where they started and fails the test."""

import pytest
import torch
from datasets import Dataset

from lenvm_rl import LengthValueModel, LenVMGRPOConfig, LenVMGRPOTrainer
from lenvm_rl.tiny import build_tiny_tokenizer

COMMON = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=16, learning_rate=5e-3,
              use_cpu=True, bf16=False, report_to="none", logging_steps=1, beta=0.0, seed=0, save_strategy="no",
              disable_tqdm=True, length_gate="none", length_coef=1.0)


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


def other_constant_reward(completions, **kwargs):
    return [0.5] * len(completions)


CASES = {
    **{f"loss_type={loss}": {"loss_type": loss} for loss in
       ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")},
    "num_iterations=2": {"num_iterations": 2},
    "steps_per_generation=2": {"steps_per_generation": 2},
    "gradient_accumulation_steps=2": {"gradient_accumulation_steps": 2},
    "importance_sampling_level=sequence": {"importance_sampling_level": "sequence"},
    "mask_truncated_completions": {"mask_truncated_completions": True},
    "off_policy_mask_threshold": {"off_policy_mask_threshold": 0.5},
    "reward_weights": {"reward_weights": [1.0, 0.5]},
    "conversational": {},
    "peft": {},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_length_term_reaches_the_loss_under_trl_options(case, tiny_model_dir, tmp_path):
    options = CASES[case]
    rows = [{"prompt": f"add: {i} {i + 3}"} for i in range(32)]
    if case == "conversational":
        rows = [{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]
    reward_funcs = [constant_reward, other_constant_reward] if case == "reward_weights" else constant_reward
    kwargs = {}
    if case == "peft":
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=2, **{**COMMON, **options})
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=reward_funcs, args=args,
                               train_dataset=Dataset.from_list(rows), critic=critic,
                               critic_processing_class=build_tiny_tokenizer(), **kwargs)
    trainable = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = [name for name, before in trainable.items() if not torch.equal(before, after[name].detach())]
    assert moved, f"{case}: no trainable weight moved, so the length term never reached the loss"
    logged = [entry for entry in trainer.state.log_history if "length/advantage/std" in entry]
    assert logged and logged[0]["length/advantage/std"] > 0


def test_the_check_can_fail_without_the_length_term(tiny_model_dir, tmp_path):
    """The control: the same setup with no length term moves no weight (zero advantage, β = 0)."""
    options = {k: v for k, v in COMMON.items() if k not in ("length_gate", "length_coef")}
    args = LenVMGRPOConfig(output_dir=str(tmp_path), max_steps=2, length_mode="none", **options)
    rows = [{"prompt": f"add: {i} {i + 3}"} for i in range(32)]
    trainer = LenVMGRPOTrainer(model=str(tiny_model_dir), reward_funcs=constant_reward, args=args,
                               train_dataset=Dataset.from_list(rows))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(before[name], p.detach()) for name, p in trainer.model.named_parameters())
