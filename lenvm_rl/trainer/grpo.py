"""GRPO with a LenVM critic: ``LenVMGRPOConfig`` and ``LenVMGRPOTrainer``, thin subclasses of TRL's GRPO.

TRL's GRPO gives every token of a completion the same group-normalized advantage ``A_task``. Here the frozen
critic adds per-token length credit (docs/method.md):

* ``length_mode="advantage"``: ``A_t = A_task + s · g · A_len_t`` with ``A_len`` the GAE (``γ`` of the critic,
  ``length_lam``) of ``δ_t = -(1-γ) + γV(s_{t+1}) - V(s_t)``; ``s`` = ``length_coef`` (optionally scheduled) and
  ``g`` the gate: 1, or — with ``length_gate="success"`` — 1 only for completions whose task reward reaches
  ``length_gate_threshold`` (the correct ones for 0/1 rewards), so a wrong answer is never paid for being short.
  ``s > 0`` prefers shorter continuations.
* ``length_mode="shaping"``: ``A_t = A_task + β · Σ_k (γλ_s)^k F_{t+k}`` with ``F_t = γΦ(s_{t+1}) - Φ(s_t)``,
  ``Φ = V`` frozen, ``Φ(terminal) = 0``; ``β`` = ``length_coef`` and ``λ_s`` = ``shaping_lam``. With ``λ_s = 1``
  the term is ``-βΦ(s_t)``, a pure state baseline: the task optimum is unchanged. With ``λ_s = 0`` it is the
  one-step progress signal ``βF_t``: credit for tokens that bring the end closer, which does bias the policy
  toward shortness. Intermediate values interpolate.
* ``length_mode="none"``: exactly TRL's GRPO (no critic is loaded; the losses match ``GRPOTrainer`` bit for bit).

The seam is ``_generate_and_score_completions``: after TRL has generated, scored and normalized, the critic runs
once on the completions TRL produced and the ``(B,)`` advantages become ``(B, T)`` ones, which TRL's loss accepts.
``_calculate_rewards`` is wrapped to remember the task rewards for the gate. Both are private TRL methods, so the
TRL range is pinned in ``pyproject.toml`` and ``tests/test_grpo.py`` checks the seam.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer

from ..data import check_same_tokenizer, tokenizer_fingerprint
from ..length_math import check_gamma, value_targets
from ..modeling import LengthValueModel, unwrap_critic
from ..signals import LengthCritic

__all__ = ["LenVMGRPOConfig", "LenVMGRPOTrainer", "LENGTH_MODES", "LENGTH_GATES"]

LENGTH_MODES = ("advantage", "shaping", "none")
LENGTH_GATES = ("none", "success")
COEF_SCHEDULES = ("constant", "linear_warmup")
CRITIC_ZERO3_MODES = ("shard", "replicate")


@dataclass
class LenVMGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the LenVM critic options (see the module docstring for the equations)."""

    length_mode: str = field(
        default="advantage",
        metadata={"help": "How the critic enters: 'advantage' (A_task + s·A_len), 'shaping' (potential-based), "
                          "or 'none' (plain TRL GRPO)."},
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
        default=1.0, metadata={"help": "s in advantage mode, β in shaping mode (> 0 prefers shorter)."}
    )
    length_coef_schedule: str = field(
        default="constant", metadata={"help": "'constant' or 'linear_warmup' (0 → length_coef over the warm-up)."}
    )
    length_coef_warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of the linear warm-up."})
    length_lam: float = field(default=0.95, metadata={"help": "GAE λ of the length advantage."})
    length_gate: str = field(
        default="success",
        metadata={"help": "'success': apply A_len only to completions whose task reward ≥ length_gate_threshold; "
                          "'none': to all."},
    )
    length_gate_threshold: float = field(
        default=1.0, metadata={"help": "Task reward (weighted sum of reward_funcs) a completion needs to pass."}
    )
    whiten_length_advantages: bool = field(
        default=False,
        metadata={"help": "Standardize A_len over the batch's gated tokens (statistics gathered across processes)."},
    )
    shaping_lam: float = field(
        default=0.0, metadata={"help": "How far shaping terms accumulate: 1 = pure baseline, 0 = one-step progress."}
    )
    critic_refresh: bool = field(
        default=False,
        metadata={"help": "Keep regressing the critic on each generation batch (advantage mode only)."},
    )
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the critic refresh."})

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
        if self.critic_zero3 not in CRITIC_ZERO3_MODES:
            raise ValueError(f"critic_zero3 must be one of {CRITIC_ZERO3_MODES}, got {self.critic_zero3!r}")
        if self.length_mode not in LENGTH_MODES:
            raise ValueError(f"length_mode must be one of {LENGTH_MODES}, got {self.length_mode!r}")
        if self.length_gate not in LENGTH_GATES:
            raise ValueError(f"length_gate must be one of {LENGTH_GATES}, got {self.length_gate!r}")
        if self.length_coef_schedule not in COEF_SCHEDULES:
            raise ValueError(f"length_coef_schedule must be one of {COEF_SCHEDULES}, got {self.length_coef_schedule!r}")
        if not math.isfinite(self.length_coef):
            raise ValueError(f"length_coef must be a finite number, got {self.length_coef!r}")
        for name in ("length_lam", "shaping_lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.critic_gamma is not None:
            check_gamma(self.critic_gamma)
        if self.critic_refresh and self.length_mode == "shaping":
            raise ValueError(
                "critic_refresh is refused in shaping mode: potential-based shaping leaves the task optimum unchanged "
                "only for a fixed potential Φ; a critic that keeps moving turns the shaping term into a "
                "non-stationary reward. Refresh the critic offline between runs instead, or use advantage mode."
            )
        if self.length_mode != "none" and self.critic_model_name_or_path is not None:
            path = Path(self.critic_model_name_or_path)
            if (path.is_absolute() or str(path).startswith(".")) and not path.exists():
                raise FileNotFoundError(f"critic_model_name_or_path {path} does not exist")


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
            raise ValueError("LenVMGRPOTrainer needs a LenVMGRPOConfig (args)")
        if not isinstance(args, LenVMGRPOConfig):
            raise TypeError(f"args must be a LenVMGRPOConfig, got {type(args).__name__}")
        self.length_coef_fn = length_coef_fn
        self._last_rewards_per_func: Tensor | None = None
        critic_model = None
        if args.length_mode != "none":
            critic_model, critic_tokenizer = _load_critic(critic, args, critic_processing_class)
            if _zero3_enabled():
                _check_critic_for_zero3(critic_model, args.critic_zero3)  # before the policy is even loaded
        super().__init__(model, reward_funcs, args, **kwargs)
        self.length_critic: LengthCritic | None = None
        if critic_model is None:
            return
        _check_vocabulary(critic_model, critic_tokenizer, self.processing_class)
        critic_model.requires_grad_(args.critic_refresh)
        if args.critic_refresh:
            if self.is_deepspeed_enabled:
                raise ValueError("critic_refresh is not supported under DeepSpeed; refresh the critic offline")
            critic_model.to(self.accelerator.device).train()
            self.critic_optimizer = torch.optim.AdamW(critic_model.parameters(), lr=args.critic_learning_rate)
        elif self.is_deepspeed_enabled and _zero3_enabled() and args.critic_zero3 == "replicate":
            _check_replicated_critic_size(critic_model, self.model)
            critic_model = critic_model.to(self.accelerator.device).eval()
        elif self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            # Same treatment as TRL's reference and reward models: sharded under ZeRO-3, replicated otherwise.
            critic_model = prepare_deepspeed(critic_model, self.accelerator)
        else:
            critic_model = self.accelerator.prepare_model(critic_model, evaluation_mode=True, device_placement=True)
        self.critic = critic_model
        self.length_critic = LengthCritic(critic_model, self.eos_token_ids, micro_batch_size=args.critic_batch_size)

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

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.length_critic is None:
            return output
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        values = self.length_critic.values(prompt_ids, prompt_mask, completion_ids, completion_mask)
        signals = self.length_critic.signals(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                             lam=self.args.length_lam, shaping_lam=self.args.shaping_lam,
                                             values=values)
        mask = completion_mask.to(values.dtype)
        coef = self.current_length_coef()
        if self.args.length_mode == "advantage":
            term = signals.length_advantages
            if self.args.length_gate == "success":
                passed = (self._local_task_rewards(len(prompt_ids)) >= self.args.length_gate_threshold).to(term.dtype)
                term = term * passed[:, None]
                self._metrics[mode]["length/gate_pass_fraction"].append(self._global_mean(passed))
                mask = mask * passed[:, None]
            if self.args.whiten_length_advantages:
                term = self._whiten_across_processes(term, mask)
            self._log_masked_stats(mode, "length/advantage", term, mask)
        else:
            term = signals.shaping_advantages
            self._log_masked_stats(mode, "length/shaping_advantage", term, mask)
        task = output["advantages"]
        output["advantages"] = (task if task.dim() == 2 else task[:, None]) + coef * term.to(task.dtype)
        self._log_critic_metrics(mode, coef, signals, completion_mask)
        if self.args.critic_refresh and mode == "train":
            self._refresh_critic(prompt_ids, prompt_mask, completion_ids, completion_mask, signals.terminated)
        return output

    # ------------------------------------------------------------------ helpers

    def _local_task_rewards(self, local_batch: int) -> Tensor:
        """This process's rows of the weighted task reward (``Σ_k w_k r_k``) of the last generation batch."""
        rewards = self._last_rewards_per_func
        if rewards is None:
            raise RuntimeError("task rewards of the generation batch were not recorded (TRL seam changed?)")
        weights = self.reward_weights.to(rewards.device)
        total = torch.nan_to_num(rewards, nan=0.0).mul(weights).sum(dim=1)
        start = self.accelerator.process_index * local_batch
        return total[start:start + local_batch]

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

    def _log_critic_metrics(self, mode: str, coef: float, signals: Any, completion_mask: Tensor) -> None:
        lengths = completion_mask.sum(dim=1).float()
        terminated = signals.terminated
        gathered = self.accelerator.gather(torch.stack([signals.predicted_lengths.float(), lengths,
                                                        terminated.float()], dim=1))
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


def _critic_dtype(args: LenVMGRPOConfig) -> torch.dtype:
    if args.critic_dtype == "auto":
        return torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else torch.float32)
    return getattr(torch, args.critic_dtype)


def _load_critic(critic: LengthValueModel | str | None, args: LenVMGRPOConfig,
                 critic_processing_class: Any) -> tuple[LengthValueModel, Any]:
    """Load or check the critic before any generation; returns ``(critic, critic_tokenizer_or_None)``."""
    from transformers import AutoTokenizer

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
        # A replicated critic must be built whole: outside ZeRO-3's zero.Init, which would partition it at load.
        replicate = args.critic_zero3 == "replicate" and _zero3_enabled()
        with _zero3_init_disabled() if replicate else nullcontext():
            model = LengthValueModel.from_pretrained(source, dtype=_critic_dtype(args),
                                                     trust_remote_code=args.trust_remote_code)
        if tokenizer is None and (path / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(source)
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
