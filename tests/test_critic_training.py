"""Critic training: token-level loss across accumulation, γ auto, truncated rollouts, resume, LoRA, quality."""

import copy
import json
import warnings

import pytest
import torch
from datasets import Dataset
from trl import ModelConfig

from lenvm_rl import LengthValueModel, choose_gamma
from lenvm_rl.cli import main
from lenvm_rl.scripts.train_critic import CriticScriptArguments, train_critic
from lenvm_rl.tiny import build_tiny_tokenizer, save_tiny_causal_lm
from lenvm_rl.trainer.critic import (
    LenVMConfig,
    LenVMDataCollator,
    LenVMTrainer,
    length_regression_loss,
    prepare_critic_dataset,
)


def quick_config(output_dir, **overrides):
    settings = dict(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
                    logging_steps=2, save_strategy="no", eval_strategy="no", report_to="none", seed=0,
                    disable_tqdm=True, use_cpu=True)
    settings.update(overrides)
    return LenVMConfig(**settings)


def test_collator_labels_remaining_lengths():
    rows = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 1]}, {"prompt_ids": [5], "completion_ids": [9, 9, 9, 1]}]
    batch = LenVMDataCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 1], [5, 9, 9, 9, 1]]
    # position P-1+t holds L - t: last prompt token → L, EOS → 0
    assert batch["labels"].tolist() == [[-100, -100, 2, 1, 0], [4, 3, 2, 1, 0]]


def test_one_step_weighs_tokens_not_sequences(tiny_model_dir, tiny_tokenizer, tmp_path):
    """Two sequences of very different length in one optimizer step (batch 1, two accumulation steps): the update
    must equal the gradient of Σ squared errors / total supervised tokens, not the mean of per-sequence means."""
    eos = tiny_tokenizer.eos_token_id
    rows = Dataset.from_list([
        {"prompt_ids": [4, 20, 21, 5], "completion_ids": [eos], "terminated": True, "completion_length": 1},
        {"prompt_ids": [4, 22, 23, 5], "completion_ids": [30] * 39 + [eos], "terminated": True,
         "completion_length": 40},
    ])
    gamma = 0.9
    torch.manual_seed(0)
    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=gamma)
    initial = copy.deepcopy(critic)
    lr = 0.5
    args = quick_config(tmp_path, max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                        optim="sgd", learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0,
                        weight_decay=0.0, warmup_steps=0)
    LenVMTrainer(model=critic, args=args, train_dataset=rows, processing_class=tiny_tokenizer).train()

    def expected_update(per_sequence: bool):
        model = copy.deepcopy(initial)
        batch = LenVMDataCollator(pad_token_id=0)(rows.to_list())
        values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).value
        if per_sequence:
            loss = sum(length_regression_loss(values[i:i + 1], batch["labels"][i:i + 1], gamma) for i in range(2)) / 2
        else:
            loss = length_regression_loss(values, batch["labels"], gamma)
        loss.backward()
        return -lr * model.head.summary.weight.grad

    actual = critic.head.summary.weight.detach() - initial.head.summary.weight.detach()
    token_weighted, sequence_weighted = expected_update(False), expected_update(True)
    torch.testing.assert_close(actual, token_weighted, rtol=1e-4, atol=1e-7)
    assert (actual - sequence_weighted).norm() > 0.1 * sequence_weighted.norm()


def test_train_critic_with_auto_gamma_and_eval_metrics(tiny_model_dir, tiny_tokenizer, synthetic_rollouts, tmp_path):
    splits = synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=12, samples=3)
    config = quick_config(tmp_path / "critic", eval_strategy="steps", eval_steps=2)
    trainer = train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")), config,
                           ModelConfig(model_name_or_path=str(tiny_model_dir)))
    expected_gamma = choose_gamma(splits["train"]["completion_length"])
    saved = LengthValueModel.from_pretrained(tmp_path / "critic")
    assert saved.config.gamma == pytest.approx(expected_gamma)
    assert (tmp_path / "critic" / "tokenizer.json").exists()
    logged = {key for entry in trainer.state.log_history for key in entry}
    for metric in ("loss", "eval_loss", "eval_prompt_mre", "eval_constant_mre", "eval_rel_err_at_0pct",
                   "eval_rel_err_at_25pct", "eval_rel_err_at_50pct", "eval_rel_err_at_75pct"):
        assert metric in logged, metric


def test_the_same_seed_trains_the_same_critic(tiny_model_dir, tiny_tokenizer, synthetic_rollouts, tmp_path):
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=8, samples=2)
    heads = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")),
                     quick_config(tmp_path / name, max_steps=1, seed=seed),
                     ModelConfig(model_name_or_path=str(tiny_model_dir)))
        critic = LengthValueModel.from_pretrained(tmp_path / name)
        heads.append(torch.cat([p.detach().flatten() for p in critic.head.parameters()]))
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])


def test_quality_beats_constant_baseline_threefold(tiny_model_dir, tiny_tokenizer, synthetic_rollouts, tmp_path):
    """Completion length is a known function of the prompt; a few hundred CPU steps must cut the prompt-boundary
    MRE on held-out prompts to at most a third of the constant baseline's."""
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=60, samples=4)
    config = quick_config(tmp_path / "critic", max_steps=400, per_device_train_batch_size=16,
                          lr_scheduler_type="cosine", warmup_steps=10, logging_steps=100)
    trainer = train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")), config,
                           ModelConfig(model_name_or_path=str(tiny_model_dir)))
    metrics = trainer.evaluate()
    assert metrics["eval_num_prompts"] >= 10
    assert metrics["eval_prompt_mre"] <= metrics["eval_constant_mre"] / 3, metrics


def test_truncated_rollouts_policy(tiny_tokenizer, synthetic_rollouts, tmp_path):
    splits = synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=6, samples=4, truncated_every=4)
    train = splits["train"]
    num_truncated = len(train) - sum(train["terminated"])
    assert num_truncated > 0
    with pytest.warns(UserWarning, match=f"dropping {num_truncated} of {len(train)} train rollouts"):
        kept = prepare_critic_dataset(train)
    assert all(kept["terminated"]) and len(kept) == len(train) - num_truncated
    with pytest.raises(ValueError, match="truncated"):
        prepare_critic_dataset(train, truncated_rollouts="error")
    none_terminated = train.map(lambda row: {"terminated": False})
    with pytest.raises(ValueError, match="none of the .* terminated"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_critic_dataset(none_terminated)
    with pytest.raises(ValueError, match="empty"):
        prepare_critic_dataset(train.select([]))


def test_bad_config_values():
    with pytest.raises(ValueError, match="gamma"):
        LenVMConfig(output_dir="x", gamma="1.2")
    with pytest.raises(ValueError, match="truncated_rollouts"):
        LenVMConfig(output_dir="x", truncated_rollouts="keep")


def test_rollouts_from_another_tokenizer_are_refused(tiny_tokenizer, synthetic_rollouts, tmp_path):
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=4, samples=2)
    other = save_tiny_causal_lm(tmp_path / "other")
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="tokenizers differ"):
        train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")), quick_config(tmp_path / "c"),
                     ModelConfig(model_name_or_path=str(other)))
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_resume_continues_and_refuses_another_dataset(tiny_model_dir, tiny_tokenizer, synthetic_rollouts, tmp_path):
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=8, samples=2)
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir))
    script = CriticScriptArguments(rollouts=str(tmp_path / "rollouts"))
    train_critic(script, quick_config(tmp_path / "critic", max_steps=4, save_strategy="steps", save_steps=2),
                 model_args)
    checkpoint = tmp_path / "critic" / "checkpoint-4"
    assert checkpoint.exists()
    trainer = train_critic(script, quick_config(tmp_path / "critic", max_steps=6, save_strategy="steps",
                                                save_steps=2, resume_from_checkpoint=str(checkpoint)), model_args)
    assert trainer.state.global_step == 6
    synthetic_rollouts(tmp_path / "other", tiny_tokenizer, num_prompts=5, samples=2, seed=3)
    with pytest.raises(ValueError, match="cannot resume"):
        train_critic(CriticScriptArguments(rollouts=str(tmp_path / "other")),
                     quick_config(tmp_path / "critic", max_steps=8, resume_from_checkpoint=str(checkpoint)),
                     model_args)


def test_lora_bf16_gradient_checkpointing_saves_a_merged_critic(tiny_model_dir, tiny_tokenizer, synthetic_rollouts,
                                                               tmp_path):
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=6, samples=2)
    config = quick_config(tmp_path / "critic", bf16=True, gradient_checkpointing=True, gamma="0.95")
    trainer = train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")), config,
                           ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=4,
                                       lora_alpha=8, lora_dropout=0.0))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    saved = LengthValueModel.from_pretrained(tmp_path / "critic")
    assert saved.config.gamma == 0.95
    assert not (tmp_path / "critic" / "adapter_config.json").exists()
    base = LengthValueModel.from_backbone(tiny_model_dir)
    name = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved.backbone.state_dict()[name], base.backbone.state_dict()[name])


def test_cli_train_then_eval(tiny_model_dir, tiny_tokenizer, synthetic_rollouts, tmp_path, capsys):
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=10, samples=3)
    recipe = tmp_path / "critic.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\nrollouts: {tmp_path / 'rollouts'}\noutput_dir: {tmp_path / 'c'}\n"
        "max_steps: 3\nper_device_train_batch_size: 4\nlearning_rate: 0.001\nsave_strategy: 'no'\n"
        "report_to: none\nuse_cpu: true\n"
    )
    assert main(["train-critic", "--config", str(recipe), "--max_steps", "2"]) == 0
    assert main(["eval-critic", "--critic", str(tmp_path / "c"), "--rollouts", str(tmp_path / "rollouts"),
                 "--output_dir", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "prompt_mre" in out and "constant_mre" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("prompt_mre", "prompt_mre_naive", "constant_mre", "constant_mre_naive", "rel_err_at_50pct"):
        assert 0 <= metrics[key] < 10
    for plot in ("calibration.png", "error_by_position.png"):
        assert (tmp_path / "eval" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trainable_top_layers_trains_only_the_top_of_the_backbone(tiny_model_dir, tiny_tokenizer,
                                                                 synthetic_rollouts, tmp_path):
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=8, samples=2)
    config = quick_config(tmp_path / "critic", trainable_top_layers=1, eval_strategy="steps", eval_steps=2,
                          gamma="0.95")
    trainer = train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")), config,
                           ModelConfig(model_name_or_path=str(tiny_model_dir)))
    base = LengthValueModel.from_backbone(tiny_model_dir).backbone.state_dict()
    saved = LengthValueModel.from_pretrained(tmp_path / "critic")
    trained = saved.backbone.state_dict()
    for name in ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight",
                 "layers.0.input_layernorm.weight"):
        assert torch.equal(trained[name], base[name]), name
    for name in ("layers.1.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"):
        assert not torch.equal(trained[name], base[name]), name
    # the evaluation reports what the training cost so far, evaluation excluded
    evals = [entry for entry in trainer.state.log_history if "eval_train_cpu_seconds" in entry]
    assert evals and all(entry["eval_train_seconds"] > 0 for entry in evals)
    assert [e["eval_train_seconds"] for e in evals] == sorted(e["eval_train_seconds"] for e in evals)


def test_freeze_lower_layers_counts_and_errors(tiny_model_dir, tiny_tokenizer, synthetic_rollouts, tmp_path):
    from lenvm_rl.trainer.critic import freeze_lower_layers

    critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
    total = sum(p.numel() for p in critic.parameters())
    head = sum(p.numel() for p in critic.head.parameters())
    norm = critic.backbone.norm.weight.numel()
    layer = sum(p.numel() for p in critic.backbone.layers[1].parameters())
    assert freeze_lower_layers(critic, 0) == {"trainable": head + norm, "frozen": total - head - norm}
    assert freeze_lower_layers(critic, 1)["trainable"] == head + norm + layer
    assert not critic.backbone.embed_tokens.weight.requires_grad
    assert freeze_lower_layers(critic, 2)["trainable"] == total - critic.backbone.embed_tokens.weight.numel()
    with pytest.raises(ValueError, match=r"trainable_top_layers must lie in \[0, 2\]"):
        freeze_lower_layers(critic, 3)
    with pytest.raises(ValueError, match="trainable_top_layers must be ≥ 0"):
        LenVMConfig(output_dir="x", trainable_top_layers=-1)
    synthetic_rollouts(tmp_path / "rollouts", tiny_tokenizer, num_prompts=4, samples=2)
    with pytest.raises(ValueError, match="choose one"):
        train_critic(CriticScriptArguments(rollouts=str(tmp_path / "rollouts")),
                     quick_config(tmp_path / "c", trainable_top_layers=1),
                     ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True))
