"""GRPO with a LenVM critic: ``LenVMGRPOConfig`` and ``LenVMGRPOTrainer``, thin subclasses of TRL's GRPO.

TRL's GRPO gives every token of a completion the same group-normalized advantage ``A_task``. Here a frozen LenVM
critic adds per-token length credit (docs/method.md)::

    A_t = A_task + s · g · A_len_t                      (length_mode="advantage")

``s`` = ``length_coef`` (optionally scheduled; ``s > 0`` prefers shorter continuations) and ``g`` the gate: with
``length_gate="success"`` (the default) only completions whose *correctness* reward functions
(``length_gate_reward_funcs``, default the first reward function) reach ``length_gate_threshold`` get length credit,
so a wrong answer is never paid for being short; failed completions get nothing (``length_gate_failed="zero"``) or the
least favourable length outcome of their group (``"worst"``).

``A_len`` comes in two units:

* ``length_units="relative"`` (default, scale-free): per-token credit ``c_t = (l(s_t) - 1 - l(s_{t+1})) / l(s_0)`` in
  length space (``l = ln(1 + V) / ln γ``), which telescopes to ``1 - L / l(s_0)``, the fraction of the prompt's
  expected length the completion saved; centered on the group's passing completions and divided by the batch's
  standard deviation of that outcome (``length_scale``), then GAE with discount 1 and ``length_lam``. ``s = 1``
  means: one standard deviation shorter than its passing siblings earns, summed over the tokens that decided it,
  what one standard deviation of task reward earns. ``length_credit="sequence"`` puts the completion's whole normalized
  outcome ``(S_i - μ_g) / σ`` on every one of its tokens, for every λ, as GRPO broadcasts its task advantage (the
  ablation that removes token-level credit assignment and nothing else).
* ``length_units="value"`` (v1): GAE (``γ`` of the critic, ``length_lam``) of the value-space residual
  ``δ_t = -(1-γ) + γV(s_{t+1}) - V(s_t)``, optionally whitened over gated tokens. Under an automatic γ values saturate
  near -1 for long completions, so the same ``s`` means different things on different tasks.

``length_mode="none"`` is exactly TRL's GRPO (no critic is loaded; the losses match ``GRPOTrainer`` bit for bit).
There is no shaping mode in GRPO: potential-based shaping added to GRPO's advantages is the λ=0 length advantage
plus a constant ``1-γ`` per token; real shaping (before a learned task critic's GAE) is in
:class:`~lenvm_rl.trainer.ppo.LenVMPPOTrainer`.

The seam is ``_generate_and_score_completions``: after TRL has generated, scored and normalized, the critic runs
once on the completions TRL produced and the ``(B,)`` advantages become ``(B, T)`` ones, which TRL's loss accepts.
``_calculate_rewards`` is wrapped to remember the per-function rewards for the gate. Both are private TRL methods, so
the tested TRL minor version is pinned in ``pyproject.toml`` and the seam's signatures are checked at import
(:mod:`lenvm_rl.trainer._seam`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import trl
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer

from ..data import check_local_path, check_same_tokenizer, tokenizer_fingerprint
from ..length_math import (
    budget_overshoot_credits,
    check_gamma,
    group_means,
    length_advantages,
    length_outcome_statistics,
    normalize_length_credits,
    place_length_advantages,
    process_advantages,
    relative_length_credits,
    settled_mask,
    task_reward_scale,
    unbiased_length_credits,
    value_targets,
    value_to_length,
)
from ..modeling import LengthValueModel, unwrap_critic
from ..sampling import decode_compacted
from ..signals import LengthCritic, terminated_mask
from ._seam import check_trl_seam

check_trl_seam(GRPOTrainer, trl.__version__)

__all__ = ["LenVMGRPOConfig", "LenVMGRPOTrainer", "LENGTH_MODES", "LENGTH_GATES", "LENGTH_UNITS"]

logger = logging.getLogger(__name__)

LENGTH_MODES = ("advantage", "none")
LENGTH_GATES = ("none", "success")
LENGTH_UNITS = ("relative", "value")
LENGTH_CREDITS = ("token", "sequence")
LENGTH_ESTIMATORS = ("telescoping", "unbiased", "budget")
TASK_CREDITS = ("sequence", "critic")
LENGTH_CHARGES = ("all", "settled")
# floor of the task-reward std the process advantage is divided by (a group whose rewards all agree has std 0, yet
# R - V(s_t) need not vanish): with 0/1 rewards it caps the magnification at 10×
TASK_SCALE_MIN = 0.1
LENGTH_SCALES = ("batch", "group", "none")
GATE_FAILED = ("zero", "worst")
COEF_SCHEDULES = ("constant", "linear_warmup")
CRITIC_ZERO3_MODES = ("shard", "replicate")
# consecutive generation batches with no passing completion before the gate warns
GATE_PATIENCE = 5
# |length/outcome_drift| (a fraction of the expected length) past which a frozen critic is called stale
STALE_DRIFT = 0.25

# Options each mode does not read (a non-default value is refused, or warned about in mode 'none').
_CRITIC_OPTIONS = ("critic_model_name_or_path", "critic_gamma", "critic_dtype", "critic_batch_size", "critic_zero3",
                   "critic_refresh", "critic_learning_rate")
_LENGTH_OPTIONS = ("length_coef", "length_coef_schedule", "length_coef_warmup_steps", "length_lam", "length_units",
                   "length_credit", "length_scale", "length_scale_min", "length_gate", "length_gate_reward_funcs",
                   "length_gate_threshold", "length_gate_failed", "whiten_length_advantages",
                   "length_estimator", "budget_column")
_GATE_DETAILS = ("length_gate_reward_funcs", "length_gate_threshold", "length_gate_failed")
_TASK_CREDIT_DETAILS = ("task_credit_coef", "task_credit_lam", "task_credit_centering")
TASK_CREDIT_CENTERINGS = ("none", "group")
_SETTLED_DETAILS = ("settled_tolerance", "presettle_length_weight")


@dataclass
class LenVMGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the LenVM critic options (see the module docstring for the equations)."""

    # critic PPO reads task_critic_model_name_or_path as the start of the critic it learns
    _learns_task_critic: ClassVar[bool] = False

    length_mode: str = field(
        default="advantage",
        metadata={"help": "How the critic enters: 'advantage' (A_task + s·A_len) or 'none' (plain TRL GRPO). "
                          "LenVMPPOConfig adds 'shaping'."},
    )
    critic_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Saved LenVM critic (directory or hub name). Required unless mode is 'none'."}
    )
    critic_gamma: float | None = field(
        default=None, metadata={"help": "γ of the critic when its checkpoint does not store one (e.g. upstream)."}
    )
    critic_dtype: str = field(
        default="auto", metadata={"help": "Critic dtype: auto (bf16 when bf16 training, else float32), float32, ..."}
    )
    critic_batch_size: int | None = field(
        default=None, metadata={"help": "Rows per critic forward (None: the whole local generation batch)."}
    )
    critic_zero3: str = field(
        default="shard",
        metadata={"help": "Under DeepSpeed ZeRO-3: 'shard' the frozen critic across processes like the policy (TRL's "
                          "treatment of reference/reward models), or 'replicate' a full copy on every process (no "
                          "all-gathers per forward; for critics no larger than the policy). Ignored otherwise."},
    )
    length_coef: float = field(
        default=0.125, metadata={"help": "s (> 0 prefers shorter). With relative units, 1 = one batch std of length "
                                         "outcome earns what one std of task reward earns. The default is the knee "
                                         "of an earlier study's frontier under group normalization; the knee moves "
                                         "with normalization and policy (docs/method.md, 'Choosing length_coef'): "
                                         "sweep it on your task."}
    )
    length_coef_schedule: str = field(
        default="constant", metadata={"help": "'constant' or 'linear_warmup' (0 → length_coef over the warm-up)."}
    )
    length_coef_warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of the linear warm-up."})
    length_lam: float = field(default=0.95, metadata={"help": "GAE λ of the length advantage (0: each token's own "
                                                               "credit, 1: everything still to be decided)."})
    length_units: str = field(
        default="relative",
        metadata={"help": "'relative': scale-free credit in length space, normalized like the task advantage; "
                          "'value': the v1 value-space TD advantage (raw units)."},
    )
    length_credit: str = field(
        default="token",
        metadata={"help": "'token': credit where the critic places it (GAE with length_lam); 'sequence': the "
                          "completion's whole normalized length outcome on each of its tokens, as GRPO broadcasts its "
                          "advantage (the ablation; length_lam unused). Relative units only."},
    )
    length_scale: str = field(
        default="batch",
        metadata={"help": "Relative units: divide the group-centered length outcome by its std over the 'batch' "
                          "(DLER-style), the 'group' (TRL's reward default), or 'none'."},
    )
    length_scale_min: float = field(
        default=0.1,
        metadata={"help": "Relative units: floor of that std (a fraction of the expected length), so that a batch "
                          "whose passing completions barely differ in length does not blow up per-token credits."},
    )
    length_gate: str | None = field(
        default=None,
        metadata={"help": "'success' (default in advantage mode): length credit only for completions whose gate "
                          "reward functions reach length_gate_threshold; 'none': for all."},
    )
    length_gate_reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions that define success (names as TRL logs them, or indices). Default: the "
                          "first reward function. A completion passes when each reaches the threshold."},
    )
    length_gate_threshold: float = field(
        default=1.0, metadata={"help": "Reward each gate reward function must reach for a completion to pass."}
    )
    length_gate_failed: str = field(
        default="zero",
        metadata={"help": "What failed completions get: 'zero' (no length term) or 'worst' (the least favourable "
                          "length outcome of their group, never a reward for being short)."},
    )
    length_estimator: str = field(
        default="telescoping",
        metadata={"help": "Relative units: 'telescoping' (v2: c_t = (l(s_t) - 1 - l(s_{t+1})) / l(s_0), sums to the "
                          "saved fraction, biased against high-variance decisions) or 'unbiased' (v3: the value-space "
                          "TD residual times -dl/dV at V(s_t), / l(s_0); mean 0 at every state for an exact critic) "
                          "or 'budget' (the change of the predicted overshoot of each prompt's budget N, "
                          "-max(0, t + l(s_t) - N) / N; 0 for a completion predicted to end inside it; budgets from "
                          "budget_column)."},
    )
    budget_column: str = field(
        default="budget",
        metadata={"help": "Dataset column holding each prompt's token budget N (length_estimator: budget)."},
    )
    task_credit: str = field(
        default="sequence",
        metadata={"help": "'sequence': GRPO's task advantage, one number per completion; 'critic': plus a per-token "
                          "process advantage from a frozen task critic (task_critic_model_name_or_path): "
                          "task_credit_coef · Σ_k λ^k (V(s_{t+k+1}) - V(s_{t+k})) / σ_R, V(s_L) = R."},
    )
    task_critic_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved task critic (LengthValueModel whose head logit predicts the task reward, e.g. "
                          "lenvm_rl.trainer.ppo.pretrain_task_critic on the starting policy's rollouts), frozen. Read "
                          "by task_credit: critic and length_charge: settled."},
    )
    task_credit_coef: float = field(
        default=1.0, metadata={"help": "Weight of the per-token process advantage (1: as much as GRPO's own)."}
    )
    task_credit_lam: float = field(
        default=1.0,
        metadata={"help": "λ of the process advantage: 1 is (R - V(s_t)) / σ, unbiased for any critic (a state "
                          "baseline); < 1 leans on the critic's one-step changes (less variance, its errors as bias)."},
    )
    task_credit_centering: str = field(
        default="none",
        metadata={"help": "'none': the process advantage as it is; 'group': minus the group mean of its first-token "
                          "value, mean_g (R - V(s_0)) / σ, so a stale frozen critic (off by the same amount at every "
                          "state) cannot push every token one way (lenvm_rl.length_math.group_centered)."},
    )
    length_charge: str = field(
        default="all",
        metadata={"help": "'all': length credit on every token; 'settled': full length credit once the task critic's "
                          "value stops moving for the rest of the completion (the answer is decided: what follows is "
                          "waste), presettle_length_weight × it before."},
    )
    settled_tolerance: float = field(
        default=0.05,
        metadata={"help": "length_charge settled: the task critic's values from a token to the end must lie within "
                          "this of each other (task reward units) for the token to count as settled."},
    )
    presettle_length_weight: float = field(
        default=0.0,
        metadata={"help": "length_charge settled: weight of the length credit before the answer settles (0: only "
                          "the tail after it is charged, as APR; 1: the same as length_charge all)."},
    )
    whiten_length_advantages: bool = field(
        default=False,
        metadata={"help": "Value units only: standardize A_len over the batch's gated tokens (across processes)."},
    )
    critic_refresh: bool = field(
        default=False,
        metadata={"help": "Keep regressing the critic on each generation batch (advantage mode only)."},
    )
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the critic refresh."})
    compact_generation: bool = field(
        default=False,
        metadata={"help": "transformers generation only: decode with lenvm_rl.sampling.decode_compacted, which drops "
                          "each completion from the batch and the KV cache once it ends (the same distribution; "
                          "generate computes every row until the longest ends). Faster where completions stop well "
                          "before max_completion_length, as on a CPU."},
    )

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as error:
            # TRL checks the batch layout against the number of processes the launcher started, but its message
            # does not say that the process count (from the accelerate config / torchrun) is part of the product.
            message = _batch_layout_message(self, error)
            if message is None:
                raise
            raise ValueError(message) from error
        modes = self._length_modes()
        if self.length_mode == "shaping" and "shaping" not in modes:
            raise ValueError(
                "length_mode='shaping' is not a GRPO mode: added to GRPO's advantages, potential shaping is the λ=0 "
                "length advantage plus a constant (1-γ) per token. Use length_mode='advantage' with length_lam=0 for "
                "that, or LenVMPPOTrainer / `lenvm-rl ppo` with length_mode='shaping' for real potential-based "
                "shaping before the task critic's GAE."
            )
        choices = {"length_mode": modes, "critic_zero3": CRITIC_ZERO3_MODES, "length_units": LENGTH_UNITS,
                   "length_credit": LENGTH_CREDITS, "length_scale": LENGTH_SCALES,
                   "length_estimator": LENGTH_ESTIMATORS, "task_credit": TASK_CREDITS, "length_charge": LENGTH_CHARGES,
                   "task_credit_centering": TASK_CREDIT_CENTERINGS,
                   "length_gate_failed": GATE_FAILED, "length_coef_schedule": COEF_SCHEDULES}
        if self.compact_generation and (self.use_vllm or self.use_transformers_continuous_batching):
            engine = "use_vllm" if self.use_vllm else "use_transformers_continuous_batching"
            raise ValueError(f"compact_generation replaces transformers' generate loop; {engine} generates with "
                             "its own engine: set one of them")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.length_gate is not None and self.length_gate not in LENGTH_GATES:
            raise ValueError(f"length_gate must be one of {LENGTH_GATES}, got {self.length_gate!r}")
        if not math.isfinite(self.length_coef):
            raise ValueError(f"length_coef must be a finite number, got {self.length_coef!r}")
        if not (math.isfinite(self.length_scale_min) and self.length_scale_min > 0):
            raise ValueError(f"length_scale_min must be a positive number, got {self.length_scale_min!r}")
        if not 0.0 <= self.length_lam <= 1.0:
            raise ValueError(f"length_lam must lie in [0, 1], got {self.length_lam!r}")
        if self.critic_gamma is not None:
            check_gamma(self.critic_gamma)
        if not math.isfinite(self.task_credit_coef):
            raise ValueError(f"task_credit_coef must be a finite number, got {self.task_credit_coef!r}")
        if not 0.0 <= self.task_credit_lam <= 1.0:
            raise ValueError(f"task_credit_lam must lie in [0, 1], got {self.task_credit_lam!r}")
        if not (math.isfinite(self.settled_tolerance) and self.settled_tolerance >= 0):
            raise ValueError(f"settled_tolerance must be a number ≥ 0, got {self.settled_tolerance!r}")
        if not (math.isfinite(self.presettle_length_weight) and self.presettle_length_weight >= 0):
            raise ValueError(f"presettle_length_weight must be a number ≥ 0, got {self.presettle_length_weight!r}")
        if self.reads_frozen_task_critic():
            if self.task_critic_model_name_or_path is None:
                needs = "task_credit='critic'" if self.task_credit == "critic" else "length_charge='settled'"
                raise ValueError(f"{needs} needs a task critic: set task_critic_model_name_or_path to a saved one "
                                 "(fit it on the starting policy's rollouts with "
                                 "lenvm_rl.trainer.ppo.pretrain_task_critic, as the study does)")
            check_local_path(self.task_critic_model_name_or_path, "task_critic_model_name_or_path", check_hub=False)
        if self.length_gate_reward_funcs is not None and not self.length_gate_reward_funcs:
            raise ValueError("length_gate_reward_funcs is empty; leave it unset to gate on the first reward function")
        if self.critic_refresh and self.length_mode == "shaping":
            raise ValueError(
                "critic_refresh is refused in shaping mode: potential-based shaping leaves the task optimum unchanged "
                "only for a fixed potential Φ; a critic that keeps moving turns the shaping term into a "
                "non-stationary reward. Refresh the critic offline between runs instead, or use advantage mode."
            )
        self._check_ignored_options()
        if self.length_gate is None and self.length_mode == "advantage":
            self.length_gate = "success"
        if self.length_mode != "none":
            # the job and the loader ask the hub question; a config may be parsed where the run never happens
            check_local_path(self.critic_model_name_or_path, "critic_model_name_or_path", check_hub=False)

    def _length_modes(self) -> tuple[str, ...]:
        return LENGTH_MODES

    def reads_frozen_task_critic(self) -> bool:
        """Whether the trainer loads a frozen task critic (per-token task credit, or the settled-answer charge)."""
        return self.task_credit == "critic" or (self.length_mode == "advantage" and self.length_charge == "settled")

    def ignored_options(self) -> list[str]:
        """The length/critic options set to a non-default value that the chosen mode does not read."""
        ignored: tuple[str, ...] = ()
        if self.length_mode == "none":
            ignored = _CRITIC_OPTIONS + _LENGTH_OPTIONS + ("length_charge", *_SETTLED_DETAILS)
        elif self.length_mode == "shaping":
            ignored = ("length_lam", "length_units", "length_credit", "length_scale", "length_scale_min", "length_gate",
                       *_GATE_DETAILS, "length_charge", *_SETTLED_DETAILS,
                       "whiten_length_advantages", "critic_refresh", "critic_learning_rate")
            if self.length_estimator != "budget":  # critic PPO shapes with the budget potential
                ignored += ("length_estimator", "budget_column")
        else:
            if self.length_units == "relative":
                ignored += ("whiten_length_advantages",)
                if self.length_credit == "sequence":
                    ignored += ("length_lam",)
            else:
                ignored += ("length_credit", "length_scale", "length_scale_min", "length_estimator", "length_charge",
                            *_SETTLED_DETAILS)
            if self.length_units != "relative" or self.length_estimator != "budget":
                ignored += ("budget_column",)
            if self.length_charge != "settled":
                ignored += _SETTLED_DETAILS
            if self.length_gate == "none":
                ignored += _GATE_DETAILS
            if not self.critic_refresh:
                ignored += ("critic_learning_rate",)
            if self.length_coef_schedule == "constant":
                ignored += ("length_coef_warmup_steps",)
        if self.task_credit != "critic":
            ignored += _TASK_CREDIT_DETAILS
        if not self.reads_frozen_task_critic() and not self._learns_task_critic:
            ignored += ("task_critic_model_name_or_path",)
        defaults = {f.name: f.default for f in dataclasses.fields(LenVMGRPOConfig)}
        return sorted(set(name for name in ignored if getattr(self, name) != defaults[name]),
                      key=list(defaults).index)

    def _check_ignored_options(self) -> None:
        ignored = self.ignored_options()
        if not ignored:
            return
        listing = ", ".join(f"{name}={getattr(self, name)!r}" for name in ignored)
        if self.length_mode == "none":
            # 'none' is the ablation switch: flipping one flag must not force editing the rest of a recipe.
            warnings.warn(f"length_mode='none' is plain TRL GRPO and ignores {listing}", stacklevel=3)
            return
        context = f"length_mode={self.length_mode!r}"
        if self.length_mode == "advantage":
            context += f", length_units={self.length_units!r}, length_gate={self.length_gate!r}, " \
                       f"length_coef_schedule={self.length_coef_schedule!r}, critic_refresh={self.critic_refresh}"
        raise ValueError(f"{listing}: not used with {context}; remove the option or change the mode")


class LenVMGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with a LenVM critic (see the module docstring).

    Args beyond ``GRPOTrainer``'s:
        critic: a :class:`LengthValueModel` (or a path; default ``args.critic_model_name_or_path``).
        critic_processing_class: the critic's tokenizer, to check it matches the policy's (loaded from the critic
            path when it has one).
        length_coef_fn: ``step -> coefficient``, overriding the configured schedule.
    """

    def __init__(self, model: Any, reward_funcs: Any = None, args: LenVMGRPOConfig | None = None, *,
                 critic: LengthValueModel | str | None = None, critic_processing_class: Any = None,
                 length_coef_fn: Callable[[int], float] | None = None, **kwargs: Any):
        if args is None:
            # as GRPOTrainer does: a default config named after the model; without a critic that is plain GRPO
            name = (model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path",
                                                                   "model")).rstrip("/").split("/")[-1]
            if critic is None:
                warnings.warn("LenVMGRPOTrainer got no args and no critic: it runs as plain GRPO "
                              "(length_mode='none'); pass a LenVMGRPOConfig and a critic for the length term",
                              stacklevel=2)
            # bf16 only where it runs (GRPOConfig's bf16 default refuses a CPU-only machine)
            args = LenVMGRPOConfig(output_dir=f"{name}-LenVM-GRPO", bf16=torch.cuda.is_available(),
                                   length_mode="advantage" if critic is not None else "none")
        if not isinstance(args, LenVMGRPOConfig):
            raise TypeError(f"args must be a LenVMGRPOConfig, got {type(args).__name__}")
        self.length_coef_fn = length_coef_fn
        self._last_rewards_per_func: Tensor | None = None
        self._gate_failures = 0
        self._first_outcome_mean: float | None = None
        self._warned_stale = False
        critic_model = None
        if args.length_mode != "none":
            critic_model, critic_tokenizer = _load_critic(critic, args, critic_processing_class)
            if _zero3_enabled():
                _check_critic_for_zero3(critic_model, args.critic_zero3)  # before the policy is even loaded
        process_critic = None
        if args.reads_frozen_task_critic():
            process_critic, process_tokenizer = _load_frozen_task_critic(args)
            if _zero3_enabled():
                _check_critic_for_zero3(process_critic, args.critic_zero3)
        super().__init__(model, reward_funcs, args, **kwargs)
        if args.compact_generation and (_zero3_enabled() or self.is_fsdp_enabled):
            raise ValueError("compact_generation cannot run under ZeRO-3 or FSDP: every process must run the same "
                             "number of forward passes to gather the sharded weights (synced_gpus); turn it off")
        self.gate_reward_indices = self._resolve_gate_reward_funcs()
        self._check_gate_reads_scores(args)
        self.length_critic: LengthCritic | None = None
        self.process_critic: Any = None
        if process_critic is not None:
            _check_vocabulary(process_critic, process_tokenizer, self.processing_class)
            process_critic.requires_grad_(False)
            self.process_critic = self._prepare_frozen(process_critic)
        if critic_model is None:
            return
        _check_vocabulary(critic_model, critic_tokenizer, self.processing_class)
        critic_model.requires_grad_(args.critic_refresh)
        if args.critic_refresh:
            if self.is_deepspeed_enabled:
                raise ValueError("critic_refresh is not supported under DeepSpeed; refresh the critic offline")
            # scored in eval mode from the very first batch; _refresh_critic switches to train mode for its step only
            critic_model.to(self.accelerator.device).eval()
            self.critic_optimizer = torch.optim.AdamW(critic_model.parameters(), lr=args.critic_learning_rate)
        else:
            critic_model = self._prepare_frozen(critic_model)
        self.critic = critic_model
        self.length_critic = LengthCritic(critic_model, self.eos_token_ids, micro_batch_size=args.critic_batch_size)

    def _prepare_frozen(self, critic_model: LengthValueModel) -> Any:
        """A frozen critic placed like TRL's reference and reward models: sharded under ZeRO-3 (or replicated with
        ``critic_zero3: replicate``), replicated under other DeepSpeed stages, on the device otherwise."""
        if self.is_deepspeed_enabled and _zero3_enabled() and self.args.critic_zero3 == "replicate":
            _check_replicated_critic_size(critic_model, self.model)
            return critic_model.to(self.accelerator.device).eval()
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(critic_model, self.accelerator)
        return self.accelerator.prepare_model(critic_model, evaluation_mode=True, device_placement=True)

    def _check_gate_reads_scores(self, args: LenVMGRPOConfig) -> None:
        """A reward *model* scores on a continuous scale that rarely reaches the default threshold 1.0, so a gate on
        it would silently keep the length term off: refuse at start unless the threshold was set for it."""
        if args.length_mode == "none" or args.length_gate != "success" or args.length_gate_threshold != 1.0:
            return
        models = [self.reward_func_names[i] for i in self.gate_reward_indices
                  if isinstance(self.reward_funcs[i], torch.nn.Module)]
        if models:
            raise ValueError(f"the length gate reads the reward model(s) {models}, whose scores are continuous, with "
                             "the default length_gate_threshold=1.0 made for 0/1 correctness rewards: set "
                             "length_gate_threshold to the score that counts as success, point "
                             "length_gate_reward_funcs at a correctness function, or use length_gate: none")

    def _resolve_gate_reward_funcs(self) -> list[int]:
        """Indices of the reward functions that define success (``length_gate_reward_funcs``; default the first)."""
        names = self.args.length_gate_reward_funcs
        if not names:
            return [0] if self.reward_funcs else []
        indices = []
        for name in names:
            text = str(name)
            if text in self.reward_func_names:
                indices.append(self.reward_func_names.index(text))
            elif text.isdigit() and int(text) < len(self.reward_funcs):
                indices.append(int(text))
            else:
                raise ValueError(f"length_gate_reward_funcs: {text!r} is not one of the reward functions "
                                 f"{self.reward_func_names} (names as TRL logs them, or indices 0–"
                                 f"{len(self.reward_funcs) - 1})")
        return indices

    # ------------------------------------------------------------------ coefficient schedule

    def current_length_coef(self) -> float:
        """``s`` (or ``β``) at the current optimizer step."""
        step = self.state.global_step
        if self.length_coef_fn is not None:
            return float(self.length_coef_fn(step))
        coef = self.args.length_coef
        if self.args.length_coef_schedule == "linear_warmup" and self.args.length_coef_warmup_steps > 0:
            coef *= min(1.0, step / self.args.length_coef_warmup_steps)
        return coef

    # ------------------------------------------------------------------ the seam

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any, num_generations: int,
                              has_tool_images: bool = False) -> Any:
        with self._compacted_generate() if self.args.compact_generation else nullcontext():
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)

    @contextmanager
    def _compacted_generate(self) -> Any:
        # TRL's transformers path calls generate on the model it unwraps for generation, which is self.model (DDP
        # and DeepSpeed unwrap back to it): for this call only, so that evaluations and guided decoding after
        # training call generate's own loop
        model = self.model
        model.generate = functools.partial(type(model).generate, model, custom_generate=decode_compacted)
        try:
            yield
        finally:
            del model.generate

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        with_length = self.length_critic is not None and self.args.length_mode == "advantage"
        if not with_length and self.process_critic is None:
            return output
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        terminated = terminated_mask(completion_ids, completion_mask, self.eos_token_ids)
        task_values = None
        if self.process_critic is not None:
            with torch.no_grad():
                task_values = unwrap_critic(self.process_critic).eval().values_for_completions(
                    prompt_ids, prompt_mask, completion_ids, completion_mask,
                    micro_batch_size=self.args.critic_batch_size, read="logits").float()
        if self.args.task_credit == "critic":
            process = self._process_advantages(task_values, completion_mask, terminated, mode)
            _add_token_advantages(output, self.args.task_credit_coef * process)
        if not with_length:
            return output
        values = self.score_lengths(prompt_ids, prompt_mask, completion_ids, completion_mask)
        passed = self._gate(len(prompt_ids), mode).to(values.device)
        if self.args.length_units == "relative":
            weights = None
            if self.args.length_charge == "settled":
                settled = settled_mask(task_values, completion_mask, self.args.settled_tolerance)
                weights = torch.where(settled, 1.0, self.args.presettle_length_weight).to(values.dtype)
                self._log_masked_stats(mode, "length/settled_fraction", settled.to(values.dtype),
                                       completion_mask.to(values.dtype))
            budgets = self._budgets(inputs) if self.args.length_estimator == "budget" else None
            term, mask = self._relative_length_advantages(values, completion_mask, terminated, passed, mode,
                                                          weights, budgets)
        else:
            term, mask = self._value_length_advantages(values, completion_mask, terminated, passed)
        self._log_masked_stats(mode, "length/advantage", term, mask)
        coef = self.current_length_coef()
        _add_token_advantages(output, coef * term)
        self._log_critic_metrics(mode, coef, values, terminated, completion_mask)
        if self.args.critic_refresh and mode == "train":
            self._refresh_critic(prompt_ids, prompt_mask, completion_ids, completion_mask, terminated)
        return output

    def score_lengths(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor) -> Tensor:
        """``(B, T+1)`` float32 LenVM values of a TRL-layout batch, with the critic in eval mode (dropout off)."""
        unwrap_critic(self.critic).eval()
        return self.length_critic.values(prompt_ids, prompt_mask, completion_ids, completion_mask)

    def _gate(self, local_batch: int, mode: str) -> Tensor:
        """``(B,)`` bool: this process's completions that get length credit (all of them when the gate is off)."""
        if self.args.length_gate != "success":
            return torch.ones(local_batch, dtype=torch.bool)
        rewards = self._local_rewards_per_func(local_batch)[:, self.gate_reward_indices]
        passed = (torch.nan_to_num(rewards, nan=-math.inf) >= self.args.length_gate_threshold).all(dim=1)
        fraction = self._global_mean(passed.float())
        self._metrics[mode]["length/gate_pass_fraction"].append(fraction)
        if mode == "train":
            self._gate_failures = self._gate_failures + 1 if fraction == 0.0 else 0
            if self._gate_failures == GATE_PATIENCE:
                gate = [self.reward_func_names[i] for i in self.gate_reward_indices]
                warnings.warn(
                    f"no completion has passed the length gate for {GATE_PATIENCE} generation batches: the gate "
                    f"reward functions {gate} never reached length_gate_threshold={self.args.length_gate_threshold}, "
                    "so the length term is off. Check the threshold and length_gate_reward_funcs (a partial-credit or "
                    "length reward among them keeps correct answers below the threshold).", stacklevel=2)
        return passed

    def _process_advantages(self, task_values: Tensor, completion_mask: Tensor, terminated: Tensor,
                            mode: str) -> Tensor:
        """Per-token task credit (:func:`lenvm_rl.length_math.process_advantages`) in the units of GRPO's advantage:
        divided by the task reward's std over the group or the batch, as ``scale_rewards`` says (across processes).
        Unscorable completions (every reward function returned None) get none, as TRL gives them no advantage."""
        batch = len(task_values)
        rewards = self._local_task_rewards(batch).to(task_values.device).float()
        gathered = self.accelerator.gather(rewards)
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        sigma = task_reward_scale(gathered, group_size, self.args.scale_rewards, TASK_SCALE_MIN)
        rows = slice(self.accelerator.process_index * batch, (self.accelerator.process_index + 1) * batch)
        process = process_advantages(task_values, rewards, completion_mask, sigma[rows], self.args.task_credit_lam,
                                     terminated)
        process = process * self._local_scorable(batch).to(process.dtype).to(process.device)[:, None]
        if self.args.task_credit_centering == "group":
            # groups may span processes: centre on the gathered first-token values, keep this process's rows
            first = self.accelerator.gather((process[:, 0] * completion_mask[:, 0].to(process.dtype)).contiguous())
            process = (process - group_means(first, group_size)[rows, None]) * completion_mask.to(process.dtype)
        self._log_masked_stats(mode, "task_credit/advantage", process, completion_mask.to(process.dtype))
        self._log_masked_stats(mode, "task_credit/value", task_values[:, :-1], completion_mask.to(process.dtype))
        return process

    def _budgets(self, inputs: list[dict[str, Any]]) -> Tensor:
        """``(B,)`` token budgets of this process's completions, from ``budget_column`` (refused by name when a row
        lacks it or holds no positive number)."""
        column = self.args.budget_column
        budgets = []
        for index, row in enumerate(inputs):
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"length_estimator='budget' reads each prompt's token budget from column {column!r}; "
                                 f"row {index} of the batch has {value!r} (columns: {sorted(row)}); give every prompt "
                                 "a budget > 0 or set budget_column")
            budgets.append(float(value))
        return torch.tensor(budgets)

    def _relative_length_advantages(self, values: Tensor, completion_mask: Tensor, terminated: Tensor,
                                    passed: Tensor, mode: str, weights: Tensor | None = None,
                                    budgets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scale-free length advantages (module docstring); group and batch statistics span all processes.
        ``weights`` ``(B, T)`` scale each token's credit before normalization (the settled-answer charge);
        ``budgets`` ``(B,)`` are the prompts' token budgets (``length_estimator="budget"``)."""
        args = self.args
        gamma = self.length_critic.gamma
        if args.length_estimator == "budget":
            credits = budget_overshoot_credits(values, completion_mask, budgets.to(values.device), gamma, terminated)
        else:
            estimate = unbiased_length_credits if args.length_estimator == "unbiased" else relative_length_credits
            credits = estimate(values, completion_mask, gamma, terminated)
        if weights is not None:
            credits = credits * weights
        outcomes = credits.sum(dim=1)
        gathered = self.accelerator.gather(torch.stack([outcomes, passed.to(outcomes.dtype)], dim=1))
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        statistics = length_outcome_statistics(gathered[:, 0], gathered[:, 1].bool(), group_size, args.length_scale,
                                               args.length_scale_min)
        rows = slice(self.accelerator.process_index * len(values), (self.accelerator.process_index + 1) * len(values))
        normalized = normalize_length_credits(
            credits, completion_mask, group_size, passed, placement=args.length_credit,
            failed=args.length_gate_failed, statistics=tuple(t[rows] for t in statistics))
        advantages = place_length_advantages(normalized, completion_mask, args.length_lam, args.length_credit)
        passing = gathered[:, 1].bool()
        if passing.any():
            # mean outcome > 0: completions come out shorter than the critic expects (a stale critic)
            outcome_mean = float(gathered[passing, 0].mean())
            self._metrics[mode]["length/outcome_mean"].append(outcome_mean)
            self._metrics[mode]["length/outcome_scale"].append(float(statistics[1][0]))
            if mode == "train":
                self._track_staleness(outcome_mean)
        mask = completion_mask.to(values.dtype)
        if args.length_gate_failed == "zero":
            mask = mask * passed.to(mask.dtype)[:, None]
        return advantages, mask

    def _track_staleness(self, outcome_mean: float) -> None:
        """``length/outcome_drift``: the mean length outcome now minus on the first training batch. The critic was fit
        to the starting policy, so its first-batch outcome measures its own bias, and the drift since is how far the
        policy's lengths have moved from what the critic expects. In the study's sweep, LenVM at 0.5 drifted by 0.33
        (completions a third shorter than the critic predicts) within 25 of 50 steps; past
        ``STALE_DRIFT`` the critic is refit on the current policy (``critic_refresh``, or ``lenvm-rl fit-critic``
        on a checkpoint)."""
        if self._first_outcome_mean is None:
            self._first_outcome_mean = outcome_mean
        drift = outcome_mean - self._first_outcome_mean
        self._metrics["train"]["length/outcome_drift"].append(drift)
        if abs(drift) > STALE_DRIFT and not self._warned_stale and not self.args.critic_refresh:
            self._warned_stale = True
            warnings.warn(f"the policy's completions are now {abs(drift):.0%} of the expected length "
                          f"{'shorter' if drift > 0 else 'longer'} than at the start, relative to what the frozen "
                          "critic predicts (length/outcome_drift): the critic is going stale. Refit it on a checkpoint "
                          "(`lenvm-rl fit-critic --policy <checkpoint> ...`) or train with critic_refresh: true.",
                          stacklevel=2)

    def _value_length_advantages(self, values: Tensor, completion_mask: Tensor, terminated: Tensor,
                                 passed: Tensor) -> tuple[Tensor, Tensor]:
        """The v1 value-space length advantage: GAE of the length TD residual, gated, optionally whitened."""
        term, _ = length_advantages(values, completion_mask, self.length_critic.gamma, self.args.length_lam,
                                    terminated)
        gate = passed.to(term.dtype)[:, None]
        term = term * gate
        mask = completion_mask.to(values.dtype) * gate
        if self.args.whiten_length_advantages:
            term = self._whiten_across_processes(term, mask)
        return term, mask

    # ------------------------------------------------------------------ helpers

    def _local_rewards_per_func(self, local_batch: int) -> Tensor:
        """This process's rows of the per-function rewards ``(B, K)`` of the last generation batch."""
        rewards = self._last_rewards_per_func
        if rewards is None:
            raise RuntimeError("task rewards of the generation batch were not recorded (TRL seam changed?)")
        start = self.accelerator.process_index * local_batch
        return rewards[start:start + local_batch]

    def _local_scorable(self, local_batch: int) -> Tensor:
        """``(B,)`` bool: this process's completions some reward function scored (TRL gives the others no
        advantage)."""
        return ~torch.isnan(self._local_rewards_per_func(local_batch)).all(dim=1)

    def _local_task_rewards(self, local_batch: int) -> Tensor:
        """This process's rows of the weighted task reward (``Σ_k w_k r_k``) of the last generation batch."""
        rewards = self._local_rewards_per_func(local_batch)
        weights = self.reward_weights.to(rewards.device)
        return torch.nan_to_num(rewards, nan=0.0).mul(weights).sum(dim=1)

    def _global_mean(self, values: Tensor) -> float:
        gathered = self.accelerator.gather(values.detach().float())
        return float(gathered.mean()) if gathered.numel() else 0.0

    def _global_moments(self, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        local = torch.stack([(values * mask).sum(), (values.pow(2) * mask).sum(), mask.sum()]).float()
        total = self.accelerator.reduce(local, reduction="sum") if self.accelerator.num_processes > 1 else local
        count = total[2].clamp(min=1.0)
        mean = total[0] / count
        var = (total[1] / count - mean.pow(2)).clamp(min=0.0)
        return mean, var

    def _whiten_across_processes(self, values: Tensor, mask: Tensor) -> Tensor:
        mean, var = self._global_moments(values, mask)
        return (values - mean) * torch.rsqrt(var + 1e-8) * mask

    def _log_masked_stats(self, mode: str, name: str, values: Tensor, mask: Tensor) -> None:
        mean, var = self._global_moments(values, mask)
        self._metrics[mode][f"{name}/mean"].append(float(mean))
        self._metrics[mode][f"{name}/std"].append(float(var.sqrt()))

    def _log_critic_metrics(self, mode: str, coef: float, values: Tensor, terminated: Tensor,
                            completion_mask: Tensor) -> None:
        lengths = completion_mask.sum(dim=1).float()
        predicted = value_to_length(values[:, 0], self.length_critic.gamma)
        gathered = self.accelerator.gather(torch.stack([predicted.float(), lengths, terminated.float()], dim=1))
        predicted, realized, done = gathered[:, 0], gathered[:, 1], gathered[:, 2].bool()
        self._metrics[mode]["length/coef"].append(coef)
        self._metrics[mode]["length/truncated_fraction"].append(float(1.0 - done.float().mean()))
        self._metrics[mode]["critic/predicted_length"].append(float(predicted.mean()))
        if done.any():
            self._metrics[mode]["critic/realized_length"].append(float(realized[done].mean()))
            relative = (predicted[done] - realized[done]).abs() / realized[done].clamp(min=1.0)
            self._metrics[mode]["critic/length_rel_error"].append(float(relative.mean()))

    def _refresh_critic(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                        completion_mask: Tensor, terminated: Tensor) -> None:
        """One regression step of the critic on this generation batch's terminated completions: squared error
        against ``G_t`` over all supervised tokens of all processes (gradients summed across processes)."""
        critic = unwrap_critic(self.critic)
        targets, supervised = value_targets(completion_mask, critic.gamma)
        # Truncated rows have no known length; they stay in the forward (every process runs the same graph, which
        # the gradient all-reduce needs) with zero weight.
        supervised = supervised * terminated.to(supervised.dtype)[:, None]
        multi_process = self.accelerator.num_processes > 1
        count = supervised.sum()
        if multi_process:
            count = self.accelerator.reduce(count, reduction="sum")
        critic.train()
        values = critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                               micro_batch_size=self.args.critic_batch_size)
        loss = ((values - targets) ** 2 * supervised).sum() / count.clamp(min=1.0)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if multi_process:
            for parameter in critic.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)
        self.critic_optimizer.step()
        critic.eval()
        total_loss = self.accelerator.reduce(loss.detach(), reduction="sum") if multi_process else loss.detach()
        self._metrics["train"]["critic/refresh_loss"].append(float(total_loss))


def _add_token_advantages(output: dict[str, Any], term: Tensor) -> None:
    """``output["advantages"] += term`` per token: TRL's ``(B,)`` advantages become ``(B, T)``, which its loss
    accepts."""
    advantages = output["advantages"]
    output["advantages"] = (advantages if advantages.dim() == 2 else advantages[:, None]) + term.to(advantages.dtype)


def _critic_dtype(args: LenVMGRPOConfig) -> torch.dtype:
    if args.critic_dtype == "auto":
        return torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else torch.float32)
    return getattr(torch, args.critic_dtype)


def _load_critic(critic: LengthValueModel | str | None, args: LenVMGRPOConfig,
                 critic_processing_class: Any) -> tuple[LengthValueModel, Any]:
    """Load or check the critic before any generation; returns ``(critic, critic_tokenizer_or_None)``."""
    source = critic if critic is not None else args.critic_model_name_or_path
    if source is None:
        raise ValueError(
            f"length_mode={args.length_mode!r} needs a critic: pass critic= or set critic_model_name_or_path "
            "(or use length_mode='none')"
        )
    tokenizer = critic_processing_class
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists() and (path.is_absolute() or str(source).startswith(".") or os.sep in str(source)):
            raise FileNotFoundError(f"critic {source} does not exist")
        model, saved_tokenizer = _load_saved_critic(source, args, _critic_dtype(args), tokenizer is None)
        tokenizer = tokenizer if tokenizer is not None else saved_tokenizer
    else:
        model = unwrap_critic(source)
    if args.critic_gamma is not None:
        model.config.gamma = check_gamma(args.critic_gamma)
    if model.config.gamma is None:
        raise ValueError(
            "the critic has no gamma in its config; set critic_gamma to the γ it was trained with (using another γ "
            "than the training one mis-reads every value)"
        )
    return model, tokenizer


def _load_saved_critic(source: str | os.PathLike, args: LenVMGRPOConfig, dtype: torch.dtype,
                       load_tokenizer: bool = True) -> tuple[LengthValueModel, Any]:
    """A saved :class:`LengthValueModel` (built whole under ZeRO-3 with ``critic_zero3: replicate``) and, with
    ``load_tokenizer``, the tokenizer saved beside it (``None`` when there is none)."""
    from transformers import AutoTokenizer

    # A replicated critic must be built whole: outside ZeRO-3's zero.Init, which would partition it at load.
    replicate = args.critic_zero3 == "replicate" and _zero3_enabled()
    with _zero3_init_disabled() if replicate else nullcontext():
        model = LengthValueModel.from_pretrained(source, dtype=dtype, trust_remote_code=args.trust_remote_code)
    saved = load_tokenizer and (Path(source) / "tokenizer_config.json").exists()
    return model, AutoTokenizer.from_pretrained(source) if saved else None


def _load_frozen_task_critic(args: LenVMGRPOConfig) -> tuple[LengthValueModel, Any]:
    """The frozen task critic of ``task_credit: critic`` / ``length_charge: settled`` and its tokenizer (or ``None``):
    a saved :class:`LengthValueModel` whose head logit is the expected task reward, in float32."""
    from transformers import AutoConfig

    from ..modeling import LengthValueConfig

    source = args.task_critic_model_name_or_path
    check_local_path(source, "task_critic_model_name_or_path")
    model_type = AutoConfig.from_pretrained(source, trust_remote_code=args.trust_remote_code).model_type
    if model_type != LengthValueConfig.model_type:
        raise ValueError(f"task_critic_model_name_or_path {source} holds a {model_type!r} model, not a fitted task "
                         "critic (a LengthValueModel): fit one with lenvm_rl.trainer.ppo.pretrain_task_critic")
    return _load_saved_critic(source, args, torch.float32)


def _batch_layout_message(args: LenVMGRPOConfig, error: ValueError) -> str | None:
    """TRL's batch-layout error with the process count spelled out, or ``None`` for other errors."""
    text = str(error)
    if not any(key in text for key in ("num_generations", "global batch size", "generations used for")):
        return None
    processes = args.world_size
    message = (
        f"{text} The number of processes comes from the launcher ({processes}: the accelerate config's "
        "num_processes / --num_processes, or torchrun's --nproc_per_node), so the recipe's batch sizes must suit it."
    )
    steps = args.steps_per_generation
    per_process = args.per_device_train_batch_size * (steps or 0)
    if steps and args.num_generations and args.generation_batch_size == per_process * processes:
        multiple = args.num_generations // math.gcd(args.num_generations, per_process)
        message += (
            f" Global generation batch = per_device_train_batch_size ({args.per_device_train_batch_size}) × "
            f"processes ({processes}) × steps_per_generation ({steps}) = {args.generation_batch_size}, which must "
            f"hold whole groups of num_generations ({args.num_generations}) completions: launch a multiple of "
            f"{multiple} processes, or change per_device_train_batch_size / gradient_accumulation_steps."
        )
    return message


def _zero3_enabled() -> bool:
    """Whether the run shards models with DeepSpeed ZeRO-3 (set once the training arguments exist)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


@contextmanager
def _zero3_init_disabled() -> Any:
    """Load models whole while ZeRO-3 is configured: transformers partitions every model it builds (``zero.Init``)
    as long as the DeepSpeed config is registered, so unregister it for the duration and restore it after."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def _parameter_count(model: Any) -> int:
    # A parameter partitioned by ZeRO-3 reports numel() == 0 locally; ds_numel is its full size.
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())


def _check_critic_for_zero3(critic: LengthValueModel, mode: str) -> None:
    """Fail before any model is sharded when the critic cannot be placed as ``critic_zero3`` asks.

    ZeRO-3 partitions floating-point parameters only: a critic holding integer parameters (a bitsandbytes/GPTQ
    quantized backbone, packed weights) cannot be sharded. A replicated critic must be whole, not already
    partitioned by an earlier ``zero.Init``.
    """
    if mode == "shard":
        odd = sorted({str(p.dtype) for p in critic.parameters() if not p.dtype.is_floating_point})
        if odd:
            raise ValueError(
                f"the critic has parameters of dtype {', '.join(odd)} (a quantized backbone?), which DeepSpeed ZeRO-3 "
                "cannot partition; load the critic in bfloat16/float32 (critic_dtype) or set critic_zero3: replicate "
                "to keep a whole copy on every process"
            )
    elif any(hasattr(p, "ds_id") for p in critic.parameters()):
        raise ValueError(
            "critic_zero3='replicate' needs a whole critic, but the one given is already partitioned by ZeRO-3 "
            "(it was built while the DeepSpeed ZeRO-3 config was active); pass its path (critic_model_name_or_path "
            "or critic='path') so it is loaded unpartitioned, or use critic_zero3: shard"
        )


def _check_replicated_critic_size(critic: LengthValueModel, policy: Any) -> None:
    """A replicated critic costs its full size on every process; larger than the policy ZeRO-3 is sharding, it
    undoes the memory ZeRO-3 saves (and is the wrong way round for LenVM, whose critic is meant to be smaller)."""
    critic_size, policy_size = _parameter_count(critic), _parameter_count(policy)
    if critic_size > policy_size:
        raise ValueError(
            f"critic_zero3='replicate' would keep the whole critic ({critic_size:,} parameters) on every process, "
            f"but it is larger than the policy ZeRO-3 is sharding ({policy_size:,} parameters); use "
            "critic_zero3: shard (the default) for a critic this size"
        )


def _check_vocabulary(critic: LengthValueModel, critic_tokenizer: Any, policy_tokenizer: Any) -> None:
    policy_tokenizer = getattr(policy_tokenizer, "tokenizer", policy_tokenizer)  # processors wrap a tokenizer
    if critic_tokenizer is not None:
        check_same_tokenizer(tokenizer_fingerprint(policy_tokenizer), critic_tokenizer, "critic vs policy")
        return
    vocab_size = critic.get_input_embeddings().num_embeddings
    if len(policy_tokenizer) > vocab_size:
        raise ValueError(
            f"the policy's tokenizer has {len(policy_tokenizer)} tokens but the critic embeds only {vocab_size}; "
            "they cannot share a tokenizer"
        )
