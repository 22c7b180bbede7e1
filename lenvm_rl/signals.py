"""``LengthCritic``: the LenVM critic as a source of per-token RL signals, for TRL adapters and custom loops alike.

It takes prompt/completion tensors as TRL lays them out (left-padded prompts, right-padded completions), runs the
frozen critic once, and returns the ``(B, T)`` length advantage or shaping advantage of docs/method.md::

    critic = LengthCritic(LengthValueModel.from_pretrained("runs/critic"), eos_token_ids=[tokenizer.eos_token_id])
    signals = critic.signals(prompt_ids, prompt_mask, completion_ids, completion_mask, lam=0.95)
    advantages = task_advantages[:, None] + coef * signals.length_advantages
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .length_math import discounted_cumsum, length_advantages, potential_shaping, value_to_length
from .modeling import LengthValueModel, unwrap_critic

__all__ = ["LengthCritic", "LengthSignals", "terminated_mask", "completion_mask_from_ids", "gate_by_success"]


def terminated_mask(completion_ids: Tensor, completion_mask: Tensor, eos_token_ids: Sequence[int]) -> Tensor:
    """``(B,)`` bool: the completion holds an EOS token inside its mask (it ended; otherwise it was truncated)."""
    eos = torch.tensor(list(eos_token_ids), device=completion_ids.device)
    return (torch.isin(completion_ids, eos) & completion_mask.bool()).any(dim=1)


def completion_mask_from_ids(completion_ids: Tensor, eos_token_ids: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """TRL-style completion masks from raw ``generate()`` output.

    Args:
        completion_ids: ``(B, T)`` the generated tokens only (``output[:, prompt_width:]``); whatever ``generate``
            wrote after a row's first EOS (padding, which may itself be the EOS id) is ignored.
        eos_token_ids: the id or ids that end a completion.

    Returns:
        ``mask`` ``(B, T)`` long: 1 up to and including each row's first EOS, 0 after it; a row without EOS (cut at
        ``max_new_tokens``: truncated) is all ones. ``terminated`` ``(B,)`` bool: the row holds an EOS.
    """
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be (B, T), got shape {tuple(completion_ids.shape)}")
    ids = [int(eos_token_ids)] if isinstance(eos_token_ids, int) else [int(i) for i in eos_token_ids]
    if not ids:
        raise ValueError("completion_mask_from_ids needs at least one EOS token id")
    is_eos = torch.isin(completion_ids, torch.tensor(ids, device=completion_ids.device))
    terminated = is_eos.any(dim=1)
    width = completion_ids.shape[1]
    if width == 0:
        return torch.zeros_like(completion_ids, dtype=torch.long), terminated
    # argmax returns the first maximal position; a row without EOS keeps every token (last = width - 1).
    last = torch.full((completion_ids.shape[0],), width - 1, dtype=torch.long, device=completion_ids.device)
    first_eos = torch.where(terminated, is_eos.int().argmax(dim=1), last)
    positions = torch.arange(width, device=completion_ids.device).expand_as(completion_ids)
    return (positions <= first_eos[:, None]).long(), terminated


def gate_by_success(length_advantages: Tensor, rewards: Tensor, threshold: float = 1.0) -> Tensor:
    """The success gate of docs/method.md: keep a completion's length advantage only when its task reward reaches
    ``threshold`` (the correct answers, for a 0/1 reward), so a short wrong answer is never paid for being short.

    Args:
        length_advantages: ``(B, T)`` per-token length advantages (e.g. ``LengthSignals.length_advantages``).
        rewards: ``(B,)`` the task reward of each completion, from the reward functions that define correctness
            (not a sum including format or length rewards).
        threshold: the reward a completion must reach.

    Returns:
        ``(B, T)``: ``length_advantages`` on passing rows, 0 on the others.
    """
    rewards = torch.as_tensor(rewards, device=length_advantages.device)
    if length_advantages.dim() != 2 or rewards.shape != (length_advantages.shape[0],):
        raise ValueError(f"expected length_advantages (B, T) and rewards (B,), got {tuple(length_advantages.shape)} "
                         f"and {tuple(rewards.shape)}")
    if torch.isnan(rewards).any():
        raise ValueError("rewards hold NaN; a reward function failed to score some completions")
    passed = rewards >= threshold
    return length_advantages * passed[:, None].to(length_advantages.dtype)


@dataclass
class LengthSignals:
    """What one critic pass yields for a batch. All tensors are float32 on the batch's device.

    Attributes:
        values: ``(B, T+1)`` critic values (column 0 at the last prompt token).
        terminated: ``(B,)`` bool.
        length_advantages: ``(B, T)`` GAE of the length residual ``δ_t = -(1-γ) + γV(s_{t+1}) - V(s_t)``.
        length_returns: ``(B, T)`` the matching λ-returns.
        shaping_advantages: ``(B, T)`` ``Σ_k (γλ_s)^k F_{t+k}`` with ``F_t = γΦ(s_{t+1}) - Φ(s_t)``, ``Φ = V``.
        predicted_lengths: ``(B,)`` tokens predicted at the prompt boundary, ``ln(1 + V(s_0)) / ln γ``.
    """

    values: Tensor
    terminated: Tensor
    length_advantages: Tensor
    length_returns: Tensor
    shaping_advantages: Tensor
    predicted_lengths: Tensor


class LengthCritic:
    """A frozen (by default) LenVM critic that turns completions into per-token length signals.

    Args:
        critic: a :class:`LengthValueModel`, possibly wrapped (DeepSpeed, DDP, LoRA); its config must carry γ.
        eos_token_ids: token ids that end a completion (a completion without one inside its mask is truncated and
            bootstraps from the critic's value at its last state).
        micro_batch_size: rows per critic forward (``None``: the whole batch).
    """

    def __init__(self, critic: Any, eos_token_ids: Sequence[int], micro_batch_size: int | None = None):
        self.model = critic
        self.critic: LengthValueModel = unwrap_critic(critic)
        self.gamma = self.critic.gamma
        if not eos_token_ids:
            raise ValueError("LengthCritic needs at least one EOS token id to tell terminated from truncated rows")
        self.eos_token_ids = [int(i) for i in eos_token_ids]
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def values(
        self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor
    ) -> Tensor:
        """``(B, T+1)`` float32 values for the batch (no gradient)."""
        return self.critic.values_for_completions(
            prompt_ids, prompt_mask, completion_ids, completion_mask, micro_batch_size=self.micro_batch_size
        ).float()

    def signals(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        lam: float = 0.95,
        shaping_lam: float = 0.0,
        values: Tensor | None = None,
    ) -> LengthSignals:
        """All per-token signals for one batch, from a single critic pass (or from ``values`` when given).

        ``lam`` is the GAE λ of the length advantage; ``shaping_lam`` how far shaping terms are accumulated
        (1: ``-Φ(s_t)``, a pure baseline that leaves the task optimum unchanged; 0: the one-step progress term).
        """
        if values is None:
            values = self.values(prompt_ids, prompt_mask, completion_ids, completion_mask)
        terminated = terminated_mask(completion_ids, completion_mask, self.eos_token_ids)
        advantages, returns = length_advantages(values, completion_mask, self.gamma, lam, terminated)
        shaping = potential_shaping(values, completion_mask, self.gamma, terminated)
        shaping_advantages = discounted_cumsum(shaping, completion_mask, self.gamma * float(shaping_lam))
        return LengthSignals(
            values=values,
            terminated=terminated,
            length_advantages=advantages,
            length_returns=returns,
            shaping_advantages=shaping_advantages,
            predicted_lengths=value_to_length(values[:, 0], self.gamma),
        )
