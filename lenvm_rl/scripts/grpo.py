"""``lenvm-rl grpo``: GRPO with a LenVM critic, from a TRL-style recipe (``--config recipe.yaml`` + flags).

The policy is ``--model_name_or_path`` (LoRA with ``--use_peft``); the options are :class:`GRPOScriptArguments`,
:class:`~lenvm_rl.trainer.grpo.LenVMGRPOConfig` and TRL's ``ModelConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig

from ..data import check_local_path, check_prompt_round_trip, evenly_spaced_indices, load_prompt_dataset
from ..rewards import resolve_reward_functions
from ..trainer.grpo import LenVMGRPOConfig, LenVMGRPOTrainer
from ._common import end_job

__all__ = ["GRPOScriptArguments", "run_grpo", "load_processing_class", "check_dataset_prompts", "main"]

_ROUND_TRIP_SAMPLE = 32


@dataclass
class GRPOScriptArguments:
    """Data and rewards of a ``lenvm-rl grpo`` run (the policy is ``--model_name_or_path``, LoRA via ``--use_peft``)."""

    dataset_name: str = field(
        metadata={"help": "Prompts: a local json/jsonl/parquet/csv file, a save_to_disk directory, or a hub name."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts (renamed 'prompt')."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: names from TRL (accuracy_reward, think_format_reward, ...), "
                          "lenvm_rl.tasks names, or import paths (my_module:my_reward or my_module.my_reward)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (processing class) of the policy: hub name or local directory (default: the "
                          "policy's own, loaded as TRL loads it)."},
    )


DATACLASSES = (GRPOScriptArguments, LenVMGRPOConfig, ModelConfig)


def load_processing_class(name: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The policy's processing class, loaded as TRL's ``GRPOTrainer`` loads it when given none (``AutoProcessor``,
    left padding and truncation), so passing it changes nothing but where it comes from."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name, revision=revision, truncation_side="left", padding_side="left",
                                         trust_remote_code=trust_remote_code)


def check_dataset_prompts(processing_class: Any, prompts: list[Any], what: str) -> bool:
    """Warn (:func:`~lenvm_rl.data.check_prompt_round_trip`) when a sample of the prompts, rendered as TRL's GRPO
    renders them (chat template with a generation prompt for conversational prompts, plain text encoded with the
    tokenizer's special tokens otherwise), does not survive ``decode(encode(text))``."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)  # processors wrap a tokenizer
    texts, ids = [], []
    for index in evenly_spaced_indices(len(prompts), _ROUND_TRIP_SAMPLE):
        prompt = prompts[index]
        conversational = isinstance(prompt, list)
        text = (tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                if conversational else str(prompt))
        texts.append(text)
        ids.append(tokenizer(text, add_special_tokens=not conversational)["input_ids"])
    return check_prompt_round_trip(tokenizer, texts, what, token_ids=ids)


def run_grpo(script_args: GRPOScriptArguments, args: LenVMGRPOConfig, model_args: Any,
             trainer_class: type[LenVMGRPOTrainer] | None = None) -> LenVMGRPOTrainer:
    """Build and run a :class:`LenVMGRPOTrainer` (or ``trainer_class``, e.g. the PPO subclass) from parsed recipe
    arguments; saves the policy (adapter with LoRA)."""
    from trl import get_peft_config

    if not model_args.model_name_or_path:
        raise ValueError("this job needs --model_name_or_path (the policy)")
    check_local_path(model_args.model_name_or_path, "model_name_or_path")
    check_local_path(script_args.tokenizer_name_or_path, "tokenizer_name_or_path")
    if args.length_mode != "none":
        check_local_path(args.critic_model_name_or_path, "critic_model_name_or_path")
    check_local_path(getattr(args, "task_critic_model_name_or_path", None), "task_critic_model_name_or_path")
    check_local_path(script_args.dataset_name, "prompt dataset")
    reward_funcs = resolve_reward_functions(script_args.reward_funcs)
    dataset = load_prompt_dataset(script_args.dataset_name, script_args.dataset_train_split,
                                  script_args.prompt_column, script_args.dataset_config)
    if script_args.prompt_column != "prompt":
        dataset = dataset.rename_column(script_args.prompt_column, "prompt")
    tokenizer_name = script_args.tokenizer_name_or_path or model_args.model_name_or_path
    processing_class = load_processing_class(
        tokenizer_name, None if script_args.tokenizer_name_or_path else model_args.model_revision,
        args.trust_remote_code)
    sample = dataset.select(evenly_spaced_indices(len(dataset), _ROUND_TRIP_SAMPLE))["prompt"]
    check_dataset_prompts(processing_class, list(sample),
                          f"{script_args.dataset_name} prompts (tokenizer {tokenizer_name})")
    args.model_init_kwargs = {**(args.model_init_kwargs or {}), "dtype": model_args.dtype,
                              "revision": model_args.model_revision,
                              "attn_implementation": model_args.attn_implementation}
    trainer_class = trainer_class or LenVMGRPOTrainer
    trainer = trainer_class(model=model_args.model_name_or_path, reward_funcs=reward_funcs, args=args,
                            train_dataset=dataset, processing_class=processing_class,
                            peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    return trainer


def main(script_args: GRPOScriptArguments, args: LenVMGRPOConfig, model_args: Any) -> None:
    trainer = run_grpo(script_args, args, model_args)
    trainer.accelerator.print(f"policy saved to {args.output_dir}")
    end_job(trainer)
