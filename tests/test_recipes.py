"""Every YAML recipe runs through the real CLI on the built-in tiny model and a local tiny dataset.

The override is the documented one: point the model/policy at the tiny model, the dataset at the shipped tiny
prompt file, and cut steps/sizes. A recipe whose fields no longer exist fails here (unknown YAML keys are errors).
"""

import shutil
from pathlib import Path

import pytest

from lenvm_rl.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY_PROMPTS = ROOT / "recipes" / "data" / "tiny_prompts.jsonl"


@pytest.fixture()
def workdir(tmp_path, tiny_model_dir, monkeypatch):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "tiny-policy")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tiny_quickstart_recipes(workdir):
    assert main(["rollout", "--config", "recipes/tiny/rollout.yaml", "--max_prompts", "16"]) == 0
    assert main(["train-critic", "--config", "recipes/tiny/train_critic.yaml", "--max_steps", "4",
                 "--eval_steps", "2"]) == 0
    assert main(["eval-critic", "--critic", "runs/tiny-critic", "--rollouts", "runs/tiny-rollouts",
                 "--output_dir", "runs/tiny-eval"]) == 0
    assert (workdir / "runs" / "tiny-eval" / "metrics.json").exists()


def test_realistic_critic_recipes_with_the_tiny_override(workdir):
    policy = str(workdir / "runs" / "tiny-policy")
    assert main(["rollout", "--config", "recipes/critic/rollout_qwen2.5-7b_gsm8k.yaml", "--policy", policy,
                 "--dataset", str(TINY_PROMPTS), "--dataset_config", "None", "--prompt_column", "prompt",
                 "--backend", "transformers", "--dtype", "float32", "--max_prompts", "8", "--num_samples", "3",
                 "--max_new_tokens", "64", "--eval_fraction", "0.25", "--output_dir", "runs/rollouts"]) == 0
    assert main(["train-critic", "--config", "recipes/critic/train_critic_qwen2.5-1.5b.yaml",
                 "--model_name_or_path", policy, "--dtype", "float32", "--rollouts", "runs/rollouts",
                 "--output_dir", "runs/critic", "--max_steps", "2", "--bf16", "false", "--use_cpu", "true",
                 "--report_to", "none", "--eval_steps", "1", "--save_steps", "2"]) == 0
    assert (workdir / "runs" / "critic" / "model.safetensors").exists()


def tiny_grpo_override(workdir):
    from transformers import AutoTokenizer

    from lenvm_rl import LengthValueModel

    policy = workdir / "runs" / "tiny-policy"
    critic = workdir / "runs" / "tiny-critic"
    LengthValueModel.from_backbone(policy, gamma=0.95).save_pretrained(critic)
    AutoTokenizer.from_pretrained(policy).save_pretrained(critic)
    return ["--model_name_or_path", str(policy), "--dtype", "float32", "--dataset_name", str(TINY_PROMPTS),
            "--dataset_config", "None", "--prompt_column", "prompt", "--reward_funcs", "arithmetic_correctness",
            "--critic_model_name_or_path", str(critic), "--critic_dtype", "float32", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "16", "--bf16", "false", "--use_cpu", "true", "--gradient_checkpointing",
            "false", "--report_to", "none", "--save_steps", "2", "--length_coef_warmup_steps", "1",
            "--lora_target_modules", "q_proj", "v_proj"]


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "grpo").glob("*.yaml")), ids=lambda p: p.stem)
def test_grpo_recipes_with_the_tiny_override(workdir, recipe):
    output_dir = workdir / "runs" / recipe.stem
    assert main(["grpo", "--config", str(recipe), *tiny_grpo_override(workdir), "--output_dir", str(output_dir)]) == 0
    assert (output_dir / "adapter_config.json").exists()  # LoRA policy saved as an adapter
