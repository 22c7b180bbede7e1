"""lenvm_rl: Length Value Model (LenVM) critics for RL fine-tuning of language models.

Every public name is importable from here, the way TRL users write ``from trl import GRPOTrainer``::

    from lenvm_rl import LengthValueModel, LenVMGRPOConfig, LenVMGRPOTrainer, length_advantages

Names load lazily (PEP 562), so ``import lenvm_rl`` imports neither torch, transformers, TRL nor DeepSpeed until a
name that needs them is used. Where each name lives:

* pure math (tensors in, tensors out): :mod:`lenvm_rl.length_math`
* the critic and its use on TRL-layout batches: :mod:`lenvm_rl.modeling`, :mod:`lenvm_rl.signals`
* data: :mod:`lenvm_rl.data`, :mod:`lenvm_rl.rollout`, :mod:`lenvm_rl.tasks`, :mod:`lenvm_rl.rewards`,
  :mod:`lenvm_rl.evaluation`, :mod:`lenvm_rl.tiny`
* trainers: :mod:`lenvm_rl.trainer` (``critic``, ``grpo``, ``ppo``)
* inference: :mod:`lenvm_rl.decoding` (``guided``, ``scoring``, ``prediction``, ``length_score``)
* the length-method study: :mod:`lenvm_rl.study`
* jobs behind the ``lenvm-rl`` command: :mod:`lenvm_rl.scripts` (not re-exported here)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name → submodule that defines it
_EXPORTS: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = module


_export(
    "length_math",
    "check_completion_mask", "check_gamma", "choose_gamma", "completion_lengths", "discounted_cumsum",
    "length_advantages", "length_outcome_statistics", "length_returns", "length_td_residuals", "length_to_value",
    "masked_mean", "masked_var",
    "masked_whiten", "normalize_length_credits", "place_length_advantages", "potential_shaping",
    "relative_length_advantages",
    "relative_length_credits", "task_gae", "value_targets", "value_to_length",
    "unbiased_length_credits", "process_advantages", "group_centered", "group_means", "budget_overshoot_credits",
    "rewards_on_last_token",
    "task_reward_scale", "settled_mask",
)
_export(
    "modeling",
    "LengthValueConfig", "LengthValueModel", "LengthValueOutput", "add_lora", "check_decoder_config", "check_tokenizer",
    "merge_lora", "unwrap_critic",
)
_export("signals", "LengthCritic", "LengthSignals", "completion_mask_from_ids", "gate_by_success", "terminated_mask")
_export(
    "data",
    "TokenizerFingerprint", "check_local_path", "check_prompt_round_trip", "check_same_tokenizer",
    "describe_tokenizer_difference", "load_prompt_dataset", "looks_like_local_path", "pad_prompt_completion_batch",
    "render_prompt", "tokenizer_fingerprint", "tokenizer_record",
)
_export("rollout", "RolloutConfig", "generate_rollouts", "load_rollouts", "sample_completions", "save_rollouts")
_export(
    "rewards",
    "KimiLengthReward", "LinearLengthPenalty", "TargetLengthReward", "TokenBudgetReward", "resolve_reward_function",
    "resolve_reward_functions", "BudgetLengthReward", "CosineScaledCorrectness",
)
_export(
    "evaluation",
    "CriticEvaluation", "critic_metrics", "plot_calibration", "plot_error_by_position", "save_figure",
    "value_space_length",
)
_export(
    "trainer.critic",
    "LenVMConfig", "LenVMDataCollator", "LenVMTrainer", "freeze_lower_layers", "length_regression_loss",
    "prepare_critic_dataset", "resolve_gamma",
)
_export("trainer.grpo", "LenVMGRPOConfig", "LenVMGRPOTrainer")
_export("trainer.ppo", "LenVMPPOConfig", "LenVMPPOTrainer", "pretrain_task_critic")
_export("sampling", "SamplingWarper", "decode_compacted")
_export("decoding.guided", "LengthGuidedLogitsProcessor", "LengthTarget", "generated_lengths", "guided_generate")
_export(
    "decoding.scoring",
    "CachedCandidateScorer", "UncachedCandidateScorer", "check_vocabulary", "score_candidates_uncached",
)
_export("decoding.prediction", "predict_length", "tokenize_prompts")
_export("decoding.length_score", "length_deviation", "length_score", "summarize_length_control")
_export("tiny", "build_tiny_tokenizer", "fit_causal_lm", "save_tiny_causal_lm", "tiny_decoder_config")
_export("study.evaluate", "EvaluateAtSteps", "evaluate_policy", "sample_within_budgets")
_export("study.tasks", "StudyTask", "get_task", "register_task", "task_names")
_export("study.methods", "METHODS", "SEQUENCE_LEVEL", "TOKEN_LEVEL", "MethodSpec", "RunPlan", "check_method_options",
        "plan_run", "expand_normalizations", "normalization_of", "normalization_gaps", "run_fingerprint")
_export("study.stats", "accuracy_at_tokens", "paired_bootstrap", "pareto_frontier", "percentile_interval",
        "tokens_at_accuracy", "student_t_quantile", "t_interval")
_export("rewards", "SelfNormalizedLengthPenalty")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lenvm_rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from .data import (
        TokenizerFingerprint,
        check_local_path,
        check_prompt_round_trip,
        check_same_tokenizer,
        describe_tokenizer_difference,
        load_prompt_dataset,
        looks_like_local_path,
        pad_prompt_completion_batch,
        render_prompt,
        tokenizer_fingerprint,
        tokenizer_record,
    )
    from .decoding.guided import LengthGuidedLogitsProcessor, LengthTarget, generated_lengths, guided_generate
    from .decoding.length_score import length_deviation, length_score, summarize_length_control
    from .decoding.prediction import predict_length, tokenize_prompts
    from .decoding.scoring import (
        CachedCandidateScorer,
        UncachedCandidateScorer,
        check_vocabulary,
        score_candidates_uncached,
    )
    from .evaluation import (
        CriticEvaluation,
        critic_metrics,
        plot_calibration,
        plot_error_by_position,
        save_figure,
        value_space_length,
    )
    from .length_math import (
        budget_overshoot_credits,
        check_completion_mask,
        check_gamma,
        choose_gamma,
        completion_lengths,
        discounted_cumsum,
        group_centered,
        group_means,
        length_advantages,
        length_outcome_statistics,
        length_returns,
        length_td_residuals,
        length_to_value,
        masked_mean,
        masked_var,
        masked_whiten,
        normalize_length_credits,
        place_length_advantages,
        potential_shaping,
        process_advantages,
        relative_length_advantages,
        relative_length_credits,
        rewards_on_last_token,
        settled_mask,
        task_gae,
        task_reward_scale,
        unbiased_length_credits,
        value_targets,
        value_to_length,
    )
    from .modeling import (
        LengthValueConfig,
        LengthValueModel,
        LengthValueOutput,
        add_lora,
        check_decoder_config,
        check_tokenizer,
        merge_lora,
        unwrap_critic,
    )
    from .rewards import (
        BudgetLengthReward,
        CosineScaledCorrectness,
        KimiLengthReward,
        LinearLengthPenalty,
        SelfNormalizedLengthPenalty,
        TargetLengthReward,
        TokenBudgetReward,
        resolve_reward_function,
        resolve_reward_functions,
    )
    from .rollout import RolloutConfig, generate_rollouts, load_rollouts, sample_completions, save_rollouts
    from .signals import LengthCritic, LengthSignals, completion_mask_from_ids, gate_by_success, terminated_mask
    from .study.evaluate import EvaluateAtSteps, evaluate_policy, sample_within_budgets
    from .study.methods import (
        METHODS,
        SEQUENCE_LEVEL,
        TOKEN_LEVEL,
        MethodSpec,
        RunPlan,
        check_method_options,
        expand_normalizations,
        normalization_gaps,
        normalization_of,
        plan_run,
        run_fingerprint,
    )
    from .study.stats import (
        accuracy_at_tokens,
        paired_bootstrap,
        pareto_frontier,
        percentile_interval,
        student_t_quantile,
        t_interval,
        tokens_at_accuracy,
    )
    from .study.tasks import StudyTask, get_task, register_task, task_names
    from .tiny import build_tiny_tokenizer, fit_causal_lm, save_tiny_causal_lm, tiny_decoder_config
    from .trainer.critic import (
        LenVMConfig,
        LenVMDataCollator,
        LenVMTrainer,
        freeze_lower_layers,
        length_regression_loss,
        prepare_critic_dataset,
        resolve_gamma,
    )
    from .trainer.grpo import LenVMGRPOConfig, LenVMGRPOTrainer
    from .trainer.ppo import LenVMPPOConfig, LenVMPPOTrainer, pretrain_task_critic
