"""Critic-based PPO with a task critic and the LenVM length critic: ``LenVMPPOConfig`` and ``LenVMPPOTrainer``.

TRL ≥ 1.13 has no PPOTrainer. This one is a thin subclass of :class:`~lenvm_rl.trainer.grpo.LenVMGRPOTrainer` (itself a
thin subclass of TRL's ``GRPOTrainer``), so generation (vLLM included), reward functions, PEFT, DeepSpeed and the
clipped policy loss stay TRL's. What changes is the task advantage: TRL's group-normalized ``(B,)`` advantage is
**replaced** by token-level GAE over a learned task critic (the baseline is the critic, not the group mean)::

    r_t      = R · 1[t = L-1]                          (sequence reward of the TRL reward functions, last token)
    δ_t      = r_t + γ_task V(s_{t+1}) - V(s_t)        (V(terminal) = 0)

A completion cut at ``max_completion_length`` (no EOS) is, with ``truncated_task_value="bootstrap"`` (default), a
time limit: no reward is paid and ``V(s_L)`` bootstraps; with ``"terminal"`` the reward functions' score of the cut
text is its final reward and ``V(s_L) = 0``.
    A_task_t = Σ_k (γ_task λ_task)^k δ_{t+k}           (lenvm_rl.length_math.task_gae), optionally whitened
    A_t      = A_task_t + s · g · A_len_t               (the LenVM term of LenVMGRPOTrainer, unchanged)

``length_mode="none"`` (or ``length_coef=0``) is plain critic PPO. The KL to the reference enters through TRL's
``beta`` KL-in-loss, not as a per-token reward penalty.

``length_mode="shaping"`` is potential-based shaping with the frozen LenVM critic as potential ``Φ = V``
(``Φ(terminal) = 0``; a truncated completion keeps ``Φ(s_L)`` when it bootstraps), added to the per-token rewards
*before* the task GAE, so the task critic learns the shaped return::

    r'_t = r_t + β (γ_task Φ(s_{t+1}) - Φ(s_t))          β = length_coef

The discount in ``F`` is the task return's ``γ_task`` (Ng et al. 1999 need the discount of the return that is
optimized): then ``Σ_t F_t = -Φ(s_0)``, the same for every completion of a prompt, and the task optimum is unchanged —
shaping moves credit toward the tokens that bring the end closer without making the policy prefer short answers at
convergence. (With the critic's own γ in ``F`` and an undiscounted task return, ``F_t`` would carry an extra ``(1-γ)Φ``
per token, a length *bonus*; ``tests/test_ppo.py`` pins the telescoping.) To trade accuracy for length, use the
advantage mode.

With ``length_estimator="budget"`` the shaping potential is the predicted overshoot of each prompt's token budget
``N`` (``budget_column``), ``Φ(s_t) = -max(0, t + l(s_t) - N) / N`` (:func:`~lenvm_rl.length_math.
budget_overshoot_credits`), and ``r'_t = r_t + β (Φ(s_{t+1}) - Φ(s_t))`` with ``γ_task = 1`` (required). This
potential is not 0 at the end: it is minus the realized overshoot, so the shaped return is the task return minus
``β · max(0, L - N) / N`` plus a per-prompt constant — it charges overshooting the budget, and each token pays the
part of it that it caused.

**Task critic.** A :class:`~lenvm_rl.modeling.LengthValueModel` whose head logit ``z`` is read as the unbounded
value (identity output, ``read="logits"``), initialized from the policy's backbone (or
``task_critic_model_name_or_path``), float32, its own AdamW. After each generation batch it is fit to the GAE
returns ``R_t = A_t + V_old(s_t)`` with PPO's clipped value loss over all completion tokens::

    L_V = vf_coef · ½ · mean_t max((V - R)², (V_old + clip(V - V_old, ±cliprange_value) - R)²)

for ``task_critic_epochs`` passes in minibatches of ``task_critic_batch_size`` rows. The first
``critic_warmup_steps`` optimizer steps train only the critic: the policy's advantages are zeroed.

The seam: ``_TaskCriticAdvantages`` sits between ``LenVMGRPOTrainer`` and ``GRPOTrainer`` in the MRO, so it
replaces TRL's advantage before the LenVM length term is added on top. Checkpoints hold ``task_critic/``
(weights, tokenizer, ``optimizer.pt``); ``resume_from_checkpoint`` restores both.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from ..data import check_local_path, pad_prompt_completion_batch
from ..length_math import budget_overshoot_credits, potential_shaping, rewards_on_last_token, task_gae
from ..modeling import LengthValueConfig, LengthValueModel
from ..signals import terminated_mask
from .grpo import LenVMGRPOConfig, LenVMGRPOTrainer, _check_vocabulary

__all__ = ["LenVMPPOConfig", "LenVMPPOTrainer", "TASK_CRITIC_DIR", "pretrain_task_critic"]

TASK_CRITIC_DIR = "task_critic"
OPTIMIZER_FILE = "optimizer.pt"
TRUNCATION_MODES = ("bootstrap", "terminal")


@dataclass
class LenVMPPOConfig(LenVMGRPOConfig):
    """``LenVMGRPOConfig`` plus the task critic and GAE options (see the module docstring for the equations)."""

    _learns_task_critic: ClassVar[bool] = True

    task_critic_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Initial task critic: a saved LengthValueModel directory or a decoder backbone. None: the "
                          "policy's own backbone (new value head)."},
    )
    gamma_task: float = field(default=1.0, metadata={"help": "Discount of the task GAE, in (0, 1]."})
    lam_task: float = field(default=0.95, metadata={"help": "λ of the task GAE, in [0, 1]."})
    vf_coef: float = field(default=0.5, metadata={"help": "Scale of the value loss (the critic has its own AdamW)."})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Clip of the value update around the rollout-time values (≤ 0: no clip)."}
    )
    task_critic_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the critic."})
    task_critic_epochs: int = field(default=1, metadata={"help": "Critic passes over each generation batch."})
    task_critic_batch_size: int | None = field(
        default=None, metadata={"help": "Rows per critic minibatch update (None: the whole local generation batch)."}
    )
    critic_warmup_steps: int = field(
        default=0, metadata={"help": "Optimizer steps during which only the critic learns (policy advantages = 0)."}
    )
    truncated_task_value: str = field(
        default="bootstrap",
        metadata={"help": "Completions cut at max_completion_length (no EOS): 'bootstrap' (a time limit: no reward is "
                          "paid, δ uses γV(s_L)) or 'terminal' (the reward functions' score of the cut text is final, "
                          "V(s_L) = 0)."},
    )
    whiten_task_advantages: bool = field(
        default=True, metadata={"help": "Standardize A_task over the batch's completion tokens (across processes)."}
    )

    def _length_modes(self) -> tuple[str, ...]:
        return ("advantage", "shaping", "none")

    def reads_frozen_task_critic(self) -> bool:
        return False  # the task critic here is learned, and its GAE already gives per-token task credit

    def __post_init__(self) -> None:
        for name, default in (("task_credit", "sequence"), ("length_charge", "all")):
            if getattr(self, name) != default:
                raise ValueError(f"{name}={getattr(self, name)!r} is a GRPO option: critic PPO's task advantage is "
                                 "already per token (GAE over its learned task critic); use lenvm-rl grpo for it")
        super().__post_init__()
        if not 0.0 < self.gamma_task <= 1.0:
            raise ValueError(f"gamma_task must lie in (0, 1], got {self.gamma_task!r}")
        if not 0.0 <= self.lam_task <= 1.0:
            raise ValueError(f"lam_task must lie in [0, 1], got {self.lam_task!r}")
        for name in ("vf_coef", "task_critic_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.task_critic_epochs < 1:
            raise ValueError(f"task_critic_epochs must be ≥ 1, got {self.task_critic_epochs}")
        if self.task_critic_batch_size is not None and self.task_critic_batch_size < 1:
            raise ValueError(f"task_critic_batch_size must be ≥ 1, got {self.task_critic_batch_size}")
        if self.truncated_task_value not in TRUNCATION_MODES:
            raise ValueError(
                f"truncated_task_value must be one of {TRUNCATION_MODES}, got {self.truncated_task_value!r}"
            )
        if self.critic_warmup_steps < 0:
            raise ValueError(f"critic_warmup_steps must be ≥ 0, got {self.critic_warmup_steps}")
        if self.length_mode == "shaping" and self.length_estimator == "budget" and self.gamma_task != 1.0:
            raise ValueError(f"budget shaping (length_estimator='budget') needs gamma_task=1, got {self.gamma_task}: "
                             "its potential differences telescope to the overshoot penalty only undiscounted")


class _TaskCriticAdvantages(GRPOTrainer):
    """Replaces TRL's group-normalized advantage with the task-critic GAE and trains the critic on the batch.

    Placed below ``LenVMGRPOTrainer`` in the MRO (see ``LenVMPPOTrainer``), so the length term is added to the
    GAE advantage exactly as it is added to GRPO's.
    """

    task_critic: LengthValueModel
    task_critic_optimizer: torch.optim.Optimizer

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        batch = len(prompt_ids)
        rewards = self._local_task_rewards(batch).to(completion_mask.device).float()
        scorable = self._local_scorable(batch).to(rewards.dtype).to(rewards.device)

        with torch.no_grad():
            old_values = self._task_values(prompt_ids, prompt_mask, completion_ids, completion_mask)
        mask = completion_mask.float()
        terminated = terminated_mask(completion_ids, completion_mask, self.eos_token_ids)
        if self.args.truncated_task_value == "terminal":
            terminated = torch.ones_like(terminated)
        # A cut completion's episode has not ended (bootstrap): its value is the critic's V(s_L), and the reward
        # functions' score of the cut text is not paid on top (paying both makes a γ = 1 critic drift upward without
        # bound, since every truncation would add a reward and promise more of the same).
        token_rewards = rewards_on_last_token(rewards, completion_mask, terminated)
        if self.args.length_mode == "shaping":
            potential = self.score_lengths(prompt_ids, prompt_mask, completion_ids, completion_mask)
            if self.args.length_estimator == "budget":
                budgets = self._budgets(inputs).to(potential.device)
                shaping = budget_overshoot_credits(potential, completion_mask, budgets, self.length_critic.gamma,
                                                   terminated)
            else:
                shaping = potential_shaping(potential, completion_mask, self.args.gamma_task, terminated)
            token_rewards = token_rewards + self.current_length_coef() * shaping * scorable[:, None]
            self._log_masked_stats(mode, "ppo/shaping_reward", shaping, mask)
        advantages, returns = task_gae(old_values, token_rewards, completion_mask, self.args.gamma_task,
                                       self.args.lam_task, terminated)
        self._log_explained_variance(mode, old_values[:, :-1], returns, mask)
        if mode == "train":
            # unscorable completions have no reward to predict: they stay out of the value loss
            self._fit_task_critic(prompt_ids, prompt_mask, completion_ids, completion_mask, old_values, returns,
                                  mask * scorable[:, None])
        if self.args.whiten_task_advantages:
            advantages = self._whiten_across_processes(advantages, mask)
        # TRL zeroes unscorable completions (every reward function returned None); so do we.
        output["advantages"] = advantages * scorable[:, None]
        self._log_masked_stats(mode, "ppo/task_advantage", output["advantages"], mask)
        return output

    def _task_values(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                     completion_mask: Tensor) -> Tensor:
        """``(B, T+1)`` float32 task values: the critic's unbounded head logit, in the LenVM column layout."""
        return self.task_critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                                       micro_batch_size=self.args.critic_batch_size,
                                                       read="logits").float()

    def _log_explained_variance(self, mode: str, values: Tensor, returns: Tensor, mask: Tensor) -> None:
        """``1 - Var(R - V) / Var(R)`` over all completion tokens of all processes (rollout-time values)."""
        _, residual_var = self._global_moments(returns - values, mask)
        _, return_var = self._global_moments(returns, mask)
        explained = 1.0 - residual_var / return_var.clamp(min=1e-8)
        self._metrics[mode]["ppo/explained_variance"].append(float(explained))
        self._log_masked_stats(mode, "ppo/value", values, mask)

    def _fit_task_critic(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                         completion_mask: Tensor, old_values: Tensor, returns: Tensor, loss_mask: Tensor) -> None:
        """``task_critic_epochs`` passes of the clipped value loss (module docstring) over this generation batch.

        ``old_values`` ``(B, T+1)`` are the rollout-time values, ``returns`` and ``loss_mask`` ``(B, T)``."""
        args = self.args
        critic = self.task_critic
        batch = len(prompt_ids)
        step = args.task_critic_batch_size or batch
        processes = self.accelerator.num_processes
        losses, clipfracs = [], []
        critic.train()
        for _ in range(args.task_critic_epochs):
            # Every process holds the same number of rows, hence the same number of minibatches: the gradient
            # all-reduce below stays in lockstep.
            for rows in torch.randperm(batch, device=prompt_ids.device).split(step):
                mask = loss_mask[rows]
                values = critic.values_for_completions(prompt_ids[rows], prompt_mask[rows], completion_ids[rows],
                                                       completion_mask[rows], read="logits").float()[:, :-1]
                old, target = old_values[rows, :-1], returns[rows]
                unclipped = (values - target) ** 2
                if args.cliprange_value > 0:
                    clipped_values = old + (values - old).clamp(-args.cliprange_value, args.cliprange_value)
                    clipped = (clipped_values - target) ** 2
                else:
                    clipped = unclipped
                per_token = torch.maximum(unclipped, clipped)
                count = mask.sum().clamp(min=1.0)
                loss = args.vf_coef * 0.5 * (per_token * mask).sum() / count
                self.task_critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if processes > 1:
                    for parameter in critic.parameters():
                        if parameter.grad is not None:
                            torch.distributed.all_reduce(parameter.grad)
                            parameter.grad.div_(processes)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
                self.task_critic_optimizer.step()
                losses.append(loss.detach())
                clipfracs.append(((clipped > unclipped).float() * mask).sum() / count)
        critic.eval()
        self._metrics["train"]["ppo/value_loss"].append(self._global_mean(torch.stack(losses)))
        self._metrics["train"]["ppo/value_clipfrac"].append(self._global_mean(torch.stack(clipfracs)))


class LenVMPPOTrainer(LenVMGRPOTrainer, _TaskCriticAdvantages):
    """Critic-based PPO on TRL's GRPO machinery, with an optional LenVM length term (see the module docstring).

    Args beyond ``LenVMGRPOTrainer``'s:
        task_critic: a :class:`LengthValueModel` to use as the task critic (its logit is the value), or a path;
            default ``args.task_critic_model_name_or_path``, else a new head on the policy's backbone.
        task_critic_processing_class: the task critic's tokenizer, checked against the policy's (loaded from the
            task critic's directory when it holds one).
    """

    def __init__(self, model: Any, reward_funcs: Any = None, args: LenVMPPOConfig | None = None, *,
                 task_critic: LengthValueModel | str | None = None, task_critic_processing_class: Any = None,
                 **kwargs: Any):
        if not isinstance(args, LenVMPPOConfig):
            raise TypeError(f"args must be a LenVMPPOConfig, got {type(args).__name__}")
        if reward_funcs is None or (isinstance(reward_funcs, (list, tuple)) and not reward_funcs):
            raise ValueError("LenVMPPOTrainer needs at least one reward function (reward_funcs): the task critic "
                             "learns to predict the task reward, so PPO has nothing to optimize without one")
        critic, critic_tokenizer = _load_task_critic(task_critic, model, args, task_critic_processing_class)
        super().__init__(model, reward_funcs, args, **kwargs)
        if self.is_deepspeed_enabled:
            raise ValueError("the PPO task critic trains with its own optimizer outside DeepSpeed; run PPO with DDP "
                             "(or use lenvm-rl grpo for DeepSpeed runs)")
        _check_task_critic(critic, critic_tokenizer, self.model, self.processing_class)
        self.task_critic = critic.to(self.accelerator.device).float().eval()
        self.task_critic.requires_grad_(True)
        self.task_critic_optimizer = torch.optim.AdamW(self.task_critic.parameters(),
                                                       lr=args.task_critic_learning_rate)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.model.training and self.state.global_step < self.args.critic_warmup_steps:
            # Critic warm-up: the critic has been fit on this batch; the policy sees zero advantage (no update
            # from the policy-gradient term; TRL's beta KL term, if any, still applies).
            output["advantages"] = torch.zeros_like(output["advantages"])
            self._metrics["train"]["ppo/critic_warmup"].append(1.0)
        return output

    # ------------------------------------------------------------------ saving and resuming

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The policy as TRL saves it, plus the task critic (and tokenizer) in ``<output_dir>/task_critic``."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            directory = Path(output_dir or self.args.output_dir) / TASK_CRITIC_DIR
            self.task_critic.save_pretrained(directory)
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            tokenizer.save_pretrained(directory)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # calls save_model(checkpoint-N), which writes the critic weights
        if self.args.should_save:
            directory = (Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                         / TASK_CRITIC_DIR)
            torch.save(self.task_critic_optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        directory = Path(checkpoint) / TASK_CRITIC_DIR
        if not directory.is_dir():
            raise FileNotFoundError(f"{checkpoint} has no {TASK_CRITIC_DIR}/: not a LenVM PPO checkpoint, cannot "
                                    "resume the task critic")
        saved = LengthValueModel.from_pretrained(directory, dtype=torch.float32)
        self.task_critic.load_state_dict(saved.state_dict())
        optimizer_file = directory / OPTIMIZER_FILE
        if optimizer_file.exists():
            state = torch.load(optimizer_file, map_location=self.accelerator.device, weights_only=True)
            self.task_critic_optimizer.load_state_dict(state)


def pretrain_task_critic(critic: LengthValueModel, rollouts: Sequence[dict[str, Any]], rewards: Sequence[float],
                         pad_token_id: int, steps: int = 300, batch_size: int = 32, learning_rate: float = 1e-3,
                         seed: int = 0, progress: bool = True) -> list[float]:
    """Fit a task critic offline to the Monte-Carlo returns of rollouts, before critic PPO starts — as the LenVM
    critic is fitted to the same policy's rollouts before RL.

    The critic's head logit is its value (``read="logits"``, as :class:`LenVMPPOTrainer` reads it). For a terminated
    rollout with task reward ``R`` the return from every state is ``R`` (``γ_task = 1``, the reward on the last
    token), so every column ``t = 0 … L-1`` of the ``(B, T+1)`` value layout is regressed on ``R`` with the squared
    error averaged over tokens. Truncated rollouts (no EOS) are left out: their return is unknown.

    Args:
        critic: a :class:`LengthValueModel`, e.g. ``LengthValueModel.from_backbone(policy)``; trained in place.
        rollouts: rows with ``prompt_ids``, ``completion_ids`` and ``terminated`` (a ``lenvm-rl rollout`` split).
        rewards: the task reward of each row.
        pad_token_id: the tokenizer's pad id.
        steps, batch_size, learning_rate, seed: AdamW steps over batches drawn with replacement.
        progress: show a progress bar with the running loss.

    Returns:
        the loss of every step.
    """
    if len(rollouts) != len(rewards):
        raise ValueError(f"{len(rollouts)} rollouts but {len(rewards)} rewards")
    kept = [(row, float(r)) for row, r in zip(rollouts, rewards, strict=True) if row["terminated"]]
    if not kept:
        raise ValueError("no terminated rollout to fit the task critic on")
    device = next(critic.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=learning_rate)
    critic.train()
    losses = []
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc="task critic", disable=not progress)
    for step in bar:
        picks = torch.randint(len(kept), (min(batch_size, len(kept)),), generator=generator).tolist()
        rows = [kept[i][0] for i in picks]
        targets = torch.tensor([kept[i][1] for i in picks], device=device)
        prompt_ids, prompt_mask, completion_ids, completion_mask = (
            t.to(device) for t in pad_prompt_completion_batch(rows, pad_token_id))
        values = critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                               read="logits").float()[:, :-1]
        mask = completion_mask.float()
        loss = (((values - targets[:, None]) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    critic.eval()
    return losses


def _load_task_critic(source: LengthValueModel | str | None, policy: Any, args: LenVMPPOConfig,
                      tokenizer: Any) -> tuple[LengthValueModel, Any]:
    """The initial task critic and its tokenizer (or ``None``), before the policy is built or anything generated."""
    source = source if source is not None else args.task_critic_model_name_or_path
    if isinstance(source, LengthValueModel):
        return source, tokenizer
    if source is None:
        if isinstance(policy, PreTrainedModel):
            # A copy: the critic must not share (and train) the policy's weights.
            return LengthValueModel.from_backbone(copy.deepcopy(policy), gamma=None), tokenizer
        if not isinstance(policy, (str, os.PathLike)):
            raise ValueError("cannot build the task critic from this policy object; pass task_critic= or set "
                             "task_critic_model_name_or_path")
        source = policy
    path = Path(source)
    check_local_path(source, "task critic")
    model_type = AutoConfig.from_pretrained(source, trust_remote_code=args.trust_remote_code).model_type
    if model_type == LengthValueConfig.model_type:
        critic = LengthValueModel.from_pretrained(source, dtype=torch.float32, trust_remote_code=args.trust_remote_code)
    else:
        critic = LengthValueModel.from_backbone(source, dtype=torch.float32, trust_remote_code=args.trust_remote_code)
    if tokenizer is None and (path / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(source)
    return critic, tokenizer


def _check_task_critic(critic: LengthValueModel, critic_tokenizer: Any, policy: Any, policy_tokenizer: Any) -> None:
    """The task critic must read the policy's tokens and be built on a backbone of the policy's width."""
    config = policy.config.get_text_config() if hasattr(policy.config, "get_text_config") else policy.config
    policy_hidden = getattr(config, "hidden_size", None)
    critic_hidden = int(critic.config.decoder_config.hidden_size)
    if policy_hidden is not None and int(policy_hidden) != critic_hidden:
        raise ValueError(
            f"the task critic's hidden size ({critic_hidden}) differs from the policy's ({policy_hidden}): the task "
            "critic is meant to be initialized from the policy's backbone (leave task_critic_model_name_or_path "
            "unset, or point it at a critic built on the policy)"
        )
    _check_vocabulary(critic, critic_tokenizer, policy_tokenizer)
