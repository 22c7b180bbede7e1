"""``lenvm-rl train-critic``: train a LenVM critic on rollouts (token-level loss, γ auto, LoRA, DeepSpeed).

The critic to start from is ``--model_name_or_path``: a decoder backbone (a new head) or a saved LenVM critic
(training continues). The result is a full critic (LoRA merged) plus its tokenizer in ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import ModelConfig

from ..data import check_local_path, check_same_tokenizer
from ..io import write_text_atomically
from ..length_math import length_to_value
from ..modeling import LengthValueModel, add_lora, check_tokenizer, merge_lora, unwrap_critic
from ..rollout import load_rollouts
from ..trainer.critic import LenVMConfig, LenVMTrainer, freeze_lower_layers, prepare_critic_dataset, resolve_gamma
from ._common import end_job

__all__ = ["CriticScriptArguments", "train_critic", "main"]

logger = logging.getLogger(__name__)

TRAINING_INFO_FILE = "lenvm_training.json"


@dataclass
class CriticScriptArguments:
    """Where the rollouts are (``lenvm-rl train-critic``). The critic to start from is ``--model_name_or_path``:
    a decoder backbone (new head) or a saved LenVM critic (continue training)."""

    rollouts: str = field(metadata={"help": "Rollout directory written by `lenvm-rl rollout`."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="eval", metadata={"help": "Split for evaluation (None: no evaluation)."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer saved with the critic (default: model_name_or_path's)."}
    )


def _load_critic(model_args: Any, config: LenVMConfig, gamma: float) -> LengthValueModel:
    """A saved LenVM critic continues training; any other decoder gets a new head."""
    from transformers import AutoConfig

    name = model_args.model_name_or_path
    load_kwargs = {"dtype": _dtype(model_args.dtype), "revision": model_args.model_revision,
                   "trust_remote_code": config.trust_remote_code}
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    if AutoConfig.from_pretrained(name, trust_remote_code=config.trust_remote_code).model_type == "lenvm":
        critic = LengthValueModel.from_pretrained(name, **load_kwargs)
        if critic.config.gamma is not None and not math.isclose(critic.config.gamma, gamma):
            logger.warning("critic %s was trained with gamma=%s; continuing with gamma=%s", name,
                           critic.config.gamma, gamma)
        critic.config.gamma = gamma
        return critic
    return LengthValueModel.from_backbone(name, gamma=gamma, head_hidden_size=config.head_hidden_size, **load_kwargs)


def _dtype(name: str | None) -> torch.dtype | str:
    return "auto" if name in (None, "auto") else getattr(torch, name)


def _lora_config(model_args: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or "all-linear", bias="none",
        use_rslora=model_args.use_rslora, use_dora=model_args.use_dora,
        modules_to_save=model_args.lora_modules_to_save,
    )


def _training_record(script_args: CriticScriptArguments, info: dict[str, Any], gamma: float) -> dict[str, Any]:
    return {"rollouts": str(Path(script_args.rollouts).resolve()), "rollout_settings": info["settings"],
            "rollout_rows": info["num_rows"], "train_split": script_args.train_split, "gamma": gamma}


def train_critic(script_args: CriticScriptArguments, config: LenVMConfig, model_args: Any) -> LenVMTrainer:
    """The ``train-critic`` job: load rollouts, resolve γ, build or load the critic (optionally LoRA), train with
    :class:`LenVMTrainer`, evaluate, and save a full critic (LoRA merged) plus its tokenizer to ``output_dir``."""
    from transformers import AutoTokenizer, set_seed

    if not model_args.model_name_or_path:
        raise ValueError("train-critic needs --model_name_or_path (a decoder backbone or a saved LenVM critic)")
    if config.trainable_top_layers is not None and model_args.use_peft:
        raise ValueError("trainable_top_layers and use_peft are two different ways to train part of the critic; "
                         "choose one")
    check_local_path(model_args.model_name_or_path, "model_name_or_path")
    check_local_path(script_args.tokenizer_name_or_path, "tokenizer_name_or_path")
    splits, info = load_rollouts(script_args.rollouts)
    if script_args.train_split not in splits:
        raise ValueError(f"{script_args.rollouts}: no split {script_args.train_split!r}; have {sorted(splits)}")
    train = prepare_critic_dataset(splits[script_args.train_split], config.truncated_rollouts, config.max_length)
    eval_data = None
    if script_args.eval_split and script_args.eval_split not in splits:
        warnings.warn(f"{script_args.rollouts} has no {script_args.eval_split!r} split; skipping evaluation",
                      stacklevel=2)
    elif script_args.eval_split:
        held_out = splits[script_args.eval_split]
        if any(held_out["terminated"]):
            eval_data = prepare_critic_dataset(held_out, "drop", config.max_length, "eval")
        else:
            warnings.warn(f"no terminated rollout in the {script_args.eval_split!r} split; skipping evaluation",
                          stacklevel=2)

    if eval_data is None and config.eval_strategy != "no":
        from transformers.trainer_utils import IntervalStrategy

        config.eval_strategy, config.do_eval = IntervalStrategy.NO, False
    tokenizer_name = script_args.tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = check_tokenizer(
        AutoTokenizer.from_pretrained(tokenizer_name, trust_remote_code=config.trust_remote_code)
    )
    check_same_tokenizer(info["tokenizer_fingerprint"], tokenizer,
                         f"rollouts {script_args.rollouts} vs critic tokenizer {tokenizer_name}")

    train_lengths = train["completion_length"]
    gamma = resolve_gamma(config.gamma, train_lengths, config.gamma_quantile, config.gamma_coverage)
    logger.info("gamma = %.6f (%s)", gamma, "auto" if config.gamma == "auto" else "given")

    record = _training_record(script_args, info, gamma)
    record_path = Path(config.output_dir) / TRAINING_INFO_FILE
    if config.resume_from_checkpoint and record_path.exists():
        previous = json.loads(record_path.read_text())
        if {k: previous.get(k) for k in record} != record:
            raise ValueError(
                f"cannot resume in {config.output_dir}: it was trained on {previous.get('rollouts')} "
                f"({previous.get('rollout_rows')} rows, gamma={previous.get('gamma')}), not on "
                f"{record['rollouts']} ({record['rollout_rows']} rows, gamma={gamma})"
            )
    write_text_atomically(record_path, json.dumps(record, indent=2))

    # the Trainer seeds itself only after the critic exists; the freshly initialized head must be seeded too, or
    # two runs with the same --seed start from different critics
    set_seed(config.seed)
    critic = _load_critic(model_args, config, gamma)
    model = add_lora(critic, _lora_config(model_args)) if model_args.use_peft else critic
    if config.trainable_top_layers is not None:
        counts = freeze_lower_layers(critic, config.trainable_top_layers)
        logger.info("training the top %d layers, the final norm and the head: %d of %d parameters",
                    config.trainable_top_layers, counts["trainable"], counts["trainable"] + counts["frozen"])
    baseline = float(length_to_value(torch.tensor(train_lengths, dtype=torch.float64), gamma).mean())
    trainer = LenVMTrainer(
        model=model, args=config, train_dataset=train, eval_dataset=eval_data, processing_class=tokenizer,
        baseline_value=baseline,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if eval_data is not None:
        trainer.evaluate()
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        _save_zero3_critic(trainer, tokenizer, config.output_dir, merge=model_args.use_peft)
        return trainer
    final = merge_lora(trainer.accelerator.unwrap_model(trainer.model)) if model_args.use_peft else None
    if final is not None:
        if trainer.accelerator.is_main_process:
            final.save_pretrained(config.output_dir)
            tokenizer.save_pretrained(config.output_dir)
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model(config.output_dir)
    return trainer


def _save_zero3_critic(trainer: LenVMTrainer, tokenizer: Any, output_dir: str, merge: bool) -> None:
    """Save a normal critic checkpoint from a ZeRO-3 run: every process holds only a shard of each weight, so gather
    them all (a LoRA merge needs whole weights too), merge, and write from the main process. Unlike the Trainer's
    own save this does not depend on ``zero3_save_16bit_model`` (without it the Trainer writes only a DeepSpeed
    checkpoint). Gathering holds the whole critic on every process for the duration of the save."""
    import deepspeed

    model = trainer.accelerator.unwrap_model(trainer.model)
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        final = merge_lora(model) if merge else unwrap_critic(model)
        if trainer.accelerator.is_main_process:
            final.save_pretrained(output_dir)
            tokenizer.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


DATACLASSES = (CriticScriptArguments, LenVMConfig, ModelConfig)


def main(script_args: CriticScriptArguments, config: LenVMConfig, model_args: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    trainer = train_critic(script_args, config, model_args)
    trainer.accelerator.print(f"critic saved to {config.output_dir}")
    end_job(trainer)
