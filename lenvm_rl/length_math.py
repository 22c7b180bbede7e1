"""Pure length math for LenVM critics: tensors in, tensors out, masks explicit.

Conventions (docs/method.md, used everywhere in this package):

* A completion ``c_0 … c_{L-1}`` ends with EOS and **L counts the EOS token**.
* State ``s_t`` is the prompt plus the first ``t`` completion tokens, ``t = 0 … L``; ``s_L`` is terminal.
* Every generated token earns ``r = -(1 - γ)``; the terminal state has value 0, so the return is
  ``G_t = -(1 - γ^(L - t))`` ∈ (-1, 0]: near 0 means "about to stop", near -1 "a long way to go".
* Values of a batch of completions of width ``T`` are a ``(B, T+1)`` tensor: column 0 is ``V(s_0)`` (read at the
  last prompt token), column ``t`` is read at completion token ``t-1``. Column ``L_b`` of a terminated row is
  terminal (treated as 0 whatever it holds); of a truncated row it is the bootstrap value.
* ``completion_mask`` is ``(B, T)`` with 1 on the ``L_b`` completion tokens of row ``b`` and 0 after (right padding).

Nothing here touches a model or a trainer; a custom training loop can call every function directly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "budget_overshoot_credits",
    "group_centered",
    "group_means",
    "check_gamma",
    "check_completion_mask",
    "completion_lengths",
    "length_to_value",
    "value_to_length",
    "choose_gamma",
    "length_returns",
    "value_targets",
    "discounted_cumsum",
    "place_length_advantages",
    "length_td_residuals",
    "length_advantages",
    "task_gae",
    "potential_shaping",
    "relative_length_credits",
    "unbiased_length_credits",
    "budget_overshoot_credits",
    "process_advantages",
    "rewards_on_last_token",
    "task_reward_scale",
    "settled_mask",
    "length_outcome_statistics",
    "normalize_length_credits",
    "relative_length_advantages",
    "masked_mean",
    "masked_var",
    "masked_whiten",
]


def check_gamma(gamma: float) -> float:
    """Return ``gamma`` as a float after checking ``0 < γ < 1`` (raises ``ValueError`` naming the value)."""
    try:
        gamma_f = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number in (0, 1), got {gamma!r}") from None
    if not (0.0 < gamma_f < 1.0) or math.isnan(gamma_f):
        raise ValueError(f"gamma must lie strictly between 0 and 1, got {gamma_f!r}")
    return gamma_f


def check_completion_mask(completion_mask: Tensor, name: str = "completion_mask") -> Tensor:
    """Check that a ``(B, T)`` mask holds only 0/1 and that every row is a prefix of ones (right padding).

    Returns the mask unchanged. Raises ``ValueError`` naming the first offending row.
    """
    if completion_mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got shape {tuple(completion_mask.shape)}")
    if completion_mask.numel() == 0:
        return completion_mask
    mask = completion_mask
    if mask.dtype == torch.bool:
        mask = mask.to(torch.int8)
    is_binary = (mask == 0) | (mask == 1)
    if not bool(is_binary.all()):
        row = int((~is_binary).any(dim=1).nonzero()[0])
        raise ValueError(f"{name} must contain only 0 and 1; row {row} holds {mask[row].tolist()}")
    if mask.shape[1] > 1:
        rises = mask[:, 1:] > mask[:, :-1]
        if bool(rises.any()):
            row = int(rises.any(dim=1).nonzero()[0])
            raise ValueError(
                f"{name} rows must be a prefix of ones followed by zeros (right-padded completions); "
                f"row {row} is {mask[row].tolist()}"
            )
    return completion_mask


def completion_lengths(completion_mask: Tensor) -> Tensor:
    """``(B,)`` int64 lengths ``L_b = Σ_t mask[b, t]`` of a checked ``(B, T)`` completion mask."""
    check_completion_mask(completion_mask)
    return completion_mask.to(torch.int64).sum(dim=1)


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    for t in tensors:
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def length_to_value(remaining: Tensor | float, gamma: float) -> Tensor:
    """Map a remaining length ``l ≥ 0`` (tokens, EOS included) to a value in (-1, 0].

    ``V = -(1 - γ^l) = expm1(l · ln γ)`` — ``expm1`` keeps precision for γ close to 1 and short lengths.
    Same shape as ``remaining``; integer inputs give the default float dtype.
    """
    gamma = check_gamma(gamma)
    remaining = torch.as_tensor(remaining)
    if not remaining.is_floating_point():
        remaining = remaining.to(torch.get_default_dtype())
    return torch.expm1(remaining.clamp(min=0) * math.log(gamma))


def value_to_length(value: Tensor | float, gamma: float) -> Tensor:
    """Map a value in (-1, 0] back to a remaining length: ``l = ln(1 + V) / ln γ`` (inverse of ``length_to_value``).

    Values are clamped into ``[-1 + eps, 0]`` (``eps`` the dtype's machine epsilon) first, so ``V ≤ -1`` gives a
    large finite length instead of ``inf`` and ``V ≥ 0`` gives 0. Same shape as ``value``.
    """
    gamma = check_gamma(gamma)
    value = torch.as_tensor(value)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    eps = torch.finfo(value.dtype).eps
    clamped = value.clamp(min=-1.0 + eps, max=0.0)
    return torch.log1p(clamped) / math.log(gamma)


def choose_gamma(lengths: Tensor | list[int], quantile: float = 0.99, coverage: float = 0.99) -> float:
    """Choose γ so that the ``quantile`` completion length ``L_q`` maps to value ``-coverage``.

    ``γ = (1 - coverage)^(1 / L_q)``; with the defaults the 99th-percentile length maps to -0.99
    (``L_q = 1533`` gives γ ≈ 0.997, the paper's Qwen2.5 choice). ``lengths`` are realized lengths (EOS counted)
    of terminated rollouts.
    """
    lengths_t = torch.as_tensor(lengths, dtype=torch.float64).flatten()
    if lengths_t.numel() == 0:
        raise ValueError("choose_gamma needs at least one terminated completion length, got none")
    if bool((lengths_t <= 0).any()) or not bool(torch.isfinite(lengths_t).all()):
        raise ValueError("choose_gamma: lengths must be positive finite token counts (EOS included)")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage!r}")
    length_q = float(torch.quantile(lengths_t, quantile))
    return float((1.0 - coverage) ** (1.0 / length_q))


def length_returns(completion_mask: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo length returns ``G_t = -(1 - γ^(L_b - t))`` for terminated rows.

    Args:
        completion_mask: ``(B, T)`` 0/1 prefix mask; ``L_b`` is the row sum (EOS included).
        gamma: discount in (0, 1).

    Returns:
        ``(B, T)`` float tensor; exactly 0 where the mask is 0. The EOS position has ``G = -(1 - γ)``.
    """
    gamma = check_gamma(gamma)
    lengths = completion_lengths(completion_mask)
    steps = torch.arange(completion_mask.shape[1], device=completion_mask.device)
    remaining = (lengths[:, None] - steps[None, :]).clamp(min=0)
    dtype = _float_dtype(completion_mask)
    returns = torch.expm1(remaining.to(dtype) * math.log(gamma))
    return returns * completion_mask.to(dtype)


def value_targets(completion_mask: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Regression targets in the ``(B, T+1)`` values layout for terminated rows.

    Column ``t`` reads ``V(s_t)``; its target is ``G_t = -(1 - γ^(L_b - t))`` for ``t ≤ L_b`` (0 at the terminal
    column ``L_b``). Returns ``(targets, supervised)``, both ``(B, T+1)``; ``supervised`` is 1 for ``t ≤ L_b``.
    """
    gamma = check_gamma(gamma)
    lengths = completion_lengths(completion_mask)
    steps = torch.arange(completion_mask.shape[1] + 1, device=completion_mask.device)
    remaining = lengths[:, None] - steps[None, :]
    supervised = (remaining >= 0).to(_float_dtype(completion_mask))
    targets = torch.expm1(remaining.clamp(min=0).to(supervised.dtype) * math.log(gamma)) * supervised
    return targets, supervised


def discounted_cumsum(rewards: Tensor, completion_mask: Tensor, discount: float) -> Tensor:
    """Reverse discounted sum along time: ``out_t = x_t + discount · out_{t+1}`` with ``out_T = 0``.

    ``x = rewards · mask``; the result is masked too, so padding is exactly 0. Shapes ``(B, T)`` → ``(B, T)``.
    GAE is ``discounted_cumsum(δ, mask, γλ)``.
    """
    if rewards.shape != completion_mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and completion_mask {tuple(completion_mask.shape)} must have one shape"
        )
    mask = completion_mask.to(rewards.dtype)
    masked = rewards * mask
    out = torch.zeros_like(masked)
    running = torch.zeros_like(masked[:, 0]) if masked.shape[1] else None
    for t in range(masked.shape[1] - 1, -1, -1):
        running = masked[:, t] + discount * running
        out[:, t] = running
    return out * mask


def _next_values(
    values: Tensor, completion_mask: Tensor, terminated: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``(B, T+1)`` values into ``V(s_t)`` and ``V(s_{t+1})`` with the terminal state of terminated rows at 0.

    Returns ``(current, following, mask)``, each ``(B, T)``, ``mask`` as float in the values' dtype.
    """
    check_completion_mask(completion_mask)
    batch, width = completion_mask.shape
    if values.dim() != 2 or values.shape != (batch, width + 1):
        raise ValueError(
            f"values must have shape (B, T+1) = ({batch}, {width + 1}) for a completion_mask of shape "
            f"({batch}, {width}); got {tuple(values.shape)}"
        )
    if not values.is_floating_point():
        raise ValueError(f"values must be a floating-point tensor, got {values.dtype}")
    lengths = completion_mask.to(torch.int64).sum(dim=1)
    if terminated is None:
        terminated = torch.ones(batch, dtype=torch.bool, device=values.device)
    terminated = torch.as_tensor(terminated, device=values.device)
    if terminated.shape != (batch,):
        raise ValueError(f"terminated must have shape (B,) = ({batch},), got {tuple(terminated.shape)}")
    steps = torch.arange(width, device=values.device)
    is_last = steps[None, :] == (lengths[:, None] - 1)
    ends_in_terminal = is_last & terminated.to(torch.bool)[:, None]
    mask = completion_mask.to(values.dtype)
    current = values[:, :width] * mask
    following = torch.where(ends_in_terminal, torch.zeros_like(current), values[:, 1:]) * mask
    return current, following, mask


def length_td_residuals(
    values: Tensor, completion_mask: Tensor, gamma: float, terminated: Tensor | None = None
) -> Tensor:
    """One-step length TD residuals ``δ_t = -(1-γ) + γ V(s_{t+1}) - V(s_t)``.

    Args:
        values: ``(B, T+1)`` critic values in the layout of the module docstring.
        completion_mask: ``(B, T)`` 0/1 prefix mask.
        gamma: the critic's discount.
        terminated: ``(B,)`` bool, True where the completion ended with EOS (terminal value 0); False rows
            bootstrap from ``values[b, L_b]``. ``None`` means every row terminated.

    Returns:
        ``(B, T)`` residuals, exactly 0 where the mask is 0.
    """
    gamma = check_gamma(gamma)
    current, following, mask = _next_values(values, completion_mask, terminated)
    return (-(1.0 - gamma) + gamma * following - current) * mask


def length_advantages(
    values: Tensor,
    completion_mask: Tensor,
    gamma: float,
    lam: float = 1.0,
    terminated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """GAE over the length TD residual: ``A_t = Σ_k (γλ)^k δ_{t+k}``, and the λ-returns ``A_t + V(s_t)``.

    With λ = 1 on a terminated row ``A_t = G_t - V(s_t)`` (positive when the continuation ended sooner than the
    critic expected); with λ = 0, ``A_t = δ_t``, the one-step change the chosen token made to the predicted horizon.

    Args:
        values: ``(B, T+1)`` critic values (column ``L_b`` is ignored for terminated rows, bootstrap otherwise).
        completion_mask: ``(B, T)`` 0/1 prefix mask.
        gamma: the critic's discount, in (0, 1).
        lam: GAE λ in [0, 1].
        terminated: ``(B,)`` bool; ``None`` means all rows terminated.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and exactly 0 where the mask is 0.
    """
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam!r}")
    deltas = length_td_residuals(values, completion_mask, gamma, terminated)
    advantages = discounted_cumsum(deltas, completion_mask, check_gamma(gamma) * float(lam))
    mask = completion_mask.to(values.dtype)
    returns = (advantages + values[:, :-1]) * mask
    return advantages, returns


def task_gae(
    values: Tensor,
    rewards: Tensor,
    completion_mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    terminated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """GAE of a task critic: ``δ_t = r_t + γ V(s_{t+1}) - V(s_t)``, ``A_t = Σ_k (γλ)^k δ_{t+k}``, returns ``A + V``.

    The task-side twin of :func:`length_advantages` (same value layout, same terminal/bootstrap rule), for an
    arbitrary per-token reward and for ``γ = 1`` (the usual choice for LLM task rewards, which a LenVM γ may not be).

    Args:
        values: ``(B, T+1)`` task-critic values; column ``L_b`` is treated as 0 on terminated rows and used as the
            bootstrap value on truncated ones.
        rewards: ``(B, T)`` per-token rewards (e.g. the sequence reward at column ``L_b - 1``, 0 elsewhere).
        completion_mask: ``(B, T)`` 0/1 prefix mask.
        gamma: discount in (0, 1].
        lam: GAE λ in [0, 1].
        terminated: ``(B,)`` bool; ``None`` means all rows terminated.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and exactly 0 where the mask is 0.
    """
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0 or math.isnan(gamma):
        raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam!r}")
    current, following, mask = _next_values(values, completion_mask, terminated)
    if rewards.shape != completion_mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} must have the completion_mask's shape "
                         f"{tuple(completion_mask.shape)}")
    deltas = (rewards.to(values.dtype) + gamma * following - current) * mask
    advantages = discounted_cumsum(deltas, completion_mask, gamma * float(lam))
    return advantages, (advantages + current) * mask


def potential_shaping(
    values: Tensor, completion_mask: Tensor, gamma: float, terminated: Tensor | None = None
) -> Tensor:
    """Potential-based shaping terms ``F_t = γ Φ(s_{t+1}) - Φ(s_t)`` with ``Φ = values`` and ``Φ(terminal) = 0``.

    Over a terminated row ``Σ_t γ^t F_t = -Φ(s_0)`` (it telescopes), the same for every completion of a prompt,
    so adding ``β · F`` to the task reward leaves the task optimum unchanged (Ng et al., 1999) — for a frozen Φ.

    ``gamma`` is the discount of the return the shaped reward enters, in (0, 1] (1 for the undiscounted task return
    of critic PPO, whose optimum is then unchanged: ``Σ_t F_t = -Φ(s_0)``).

    Shapes: ``values`` ``(B, T+1)``, ``completion_mask`` ``(B, T)``, ``terminated`` ``(B,)`` → ``(B, T)``, zeros
    where the mask is 0.
    """
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0 or math.isnan(gamma):
        raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
    current, following, mask = _next_values(values, completion_mask, terminated)
    return (gamma * following - current) * mask


def _remaining_lengths(
    values: Tensor, completion_mask: Tensor, gamma: float, terminated: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``l(s_t)`` and ``l(s_{t+1})`` (``(B, T)`` each, terminal state 0) and the float mask, in length space."""
    gamma = check_gamma(gamma)
    current, following, mask = _next_values(values, completion_mask, terminated)
    # _next_values zeroes the terminal column; value 0 maps to length 0, so l(terminal) = 0 as it must.
    return value_to_length(current, gamma) * mask, value_to_length(following, gamma) * mask, mask


def relative_length_credits(
    values: Tensor, completion_mask: Tensor, gamma: float, terminated: Tensor | None = None
) -> Tensor:
    """Per-token length credit in length space, relative to the prompt's expected length (scale-free):

        c_t = (l(s_t) - 1 - l(s_{t+1})) / l(s_0),      l(V) = ln(1 + V) / ln γ,   l(terminal) = 0

    ``c_t`` is the change token ``t`` made to the predicted total length, as a fraction of what the critic expected
    for the prompt: 0 for a token that merely spends the one token it was expected to, positive when it brought the
    end closer than expected. Over a terminated completion the credits telescope to ``Σ_t c_t = 1 - L / l(s_0)``
    (``(l(s_0) - L) / max(l(s_0), 1)`` exactly),
    the fraction of the expected length the completion saved (negative when it ran longer); a truncated row keeps
    its bootstrap ``l(s_L)`` (``Σ_t c_t = 1 - (L + l(s_L)) / l(s_0)``). The same relative cut earns the same credit on
    a 100-token and a 1,000-token prompt, and scaling every length by ``k`` (with ``γ → γ^(1/k)``) leaves the summed
    credit of each decision unchanged. ``l(s_0)`` is clamped to at least one token (EOS).

    Shapes: ``values`` ``(B, T+1)``, ``completion_mask`` ``(B, T)``, ``terminated`` ``(B,)`` → ``(B, T)``, exactly 0
    where the mask is 0.
    """
    current, following, mask = _remaining_lengths(values, completion_mask, gamma, terminated)
    expected = value_to_length(values[:, 0], gamma).clamp(min=1.0)
    return (current - 1.0 - following) * mask / expected[:, None]


def unbiased_length_credits(
    values: Tensor, completion_mask: Tensor, gamma: float, terminated: Tensor | None = None
) -> Tensor:
    """Per-token length credit in the units of :func:`relative_length_credits`, with conditional mean 0 (v3)::

        c_t = -l'(V(s_t)) · δ_t / l(s_0) = δ_t / ((1 + V(s_t)) · ln(1/γ) · l(s_0)),
        δ_t = -(1-γ) + γ V(s_{t+1}) - V(s_t)   (the value-space TD residual, V(terminal) = 0)

    The telescoping credit of :func:`relative_length_credits` is exactly ``(l(V_t) - l(V_t + δ_t)) / l(s_0)``
    (since ``1 + l(V_{t+1}) = l(γ V_{t+1} - (1-γ))``); this one is its first-order expansion in ``δ_t``. For an exact
    critic ``E[δ_t | s_t] = 0`` and the factor depends on ``s_t`` only, so ``E[c_t | s_t] = 0``: no token is charged
    for the spread of what may follow it. The telescoping credit is not: ``l`` is convex in ``V``, so its mean at a
    state is ``-(E[l(V_t + δ_t)] - l(V_t)) / l(s_0) ≤ 0``, about ``-½ l''(V_t) Var(δ_t) / l(s_0)`` — a penalty on
    every high-variance decision (with γ = 0.9 and a 50/50 choice between 3 and 40 remaining tokens: branches
    +0.68 and −3.26, mean −1.29; here ±0.97, mean 0). The price: the credits no longer sum to the completion's
    saved fraction ``1 - L / l(s_0)`` exactly, only to first order along the path. ``1 + V`` is floored at 1e-6 and
    ``l(s_0)`` at one token.

    Shapes: ``values`` ``(B, T+1)``, ``completion_mask`` ``(B, T)``, ``terminated`` ``(B,)`` → ``(B, T)``, exactly 0
    where the mask is 0.
    """
    gamma = check_gamma(gamma)
    deltas = length_td_residuals(values, completion_mask, gamma, terminated)
    current = values[:, :-1]
    slope = 1.0 / ((1.0 + current).clamp(min=1e-6) * -math.log(gamma))
    expected = value_to_length(values[:, 0], gamma).clamp(min=1.0)
    return deltas * slope * completion_mask.to(values.dtype) / expected[:, None]


def budget_overshoot_credits(
    values: Tensor, completion_mask: Tensor, budgets: Tensor, gamma: float, terminated: Tensor | None = None
) -> Tensor:
    """Per-token budget credit: the change each token makes to the predicted overshoot of the prompt's budget ``N``::

        o_t = max(0, t + l(s_t) - N),   Φ(s_t) = -o_t / N,   c_t = Φ(s_{t+1}) - Φ(s_t),   l(terminal) = 0

    ``t + l(s_t)`` is where the critic predicts the completion will end, so ``c_t < 0`` for a token that pushed the
    predicted end (further) past the budget and ``c_t > 0`` for one that pulled it back. The credits telescope: over
    a terminated completion ``Σ_t c_t = (o_0 - max(0, L - N)) / N`` (the realized overshoot against the one predicted
    at the prompt, which is the same for every completion of the prompt), a truncated row ends at its bootstrap
    ``o_L = max(0, L + l(s_L) - N)``. A policy whose predicted end stays within the budget at every state earns 0 at
    every token: the term only ever speaks about overshooting. Its potential is not 0 at the end (it is minus the
    realized overshoot), so added to a return (critic PPO shaping) it is a terminal overshoot penalty
    ``-max(0, L - N) / N`` plus a per-prompt constant, spread over the tokens that caused it; in GRPO it is a
    per-token term beside the task advantage, like the length credit. ``N`` is floored at one token.

    Shapes: ``values`` ``(B, T+1)``, ``completion_mask`` ``(B, T)``, ``budgets`` ``(B,)`` tokens, ``terminated``
    ``(B,)`` → ``(B, T)``, exactly 0 where the mask is 0.
    """
    current, following, mask = _remaining_lengths(values, completion_mask, gamma, terminated)
    budgets = torch.as_tensor(budgets, dtype=values.dtype, device=values.device)
    if budgets.shape != (completion_mask.shape[0],):
        raise ValueError(f"budgets must have shape (B,) = ({completion_mask.shape[0]},), got {tuple(budgets.shape)}")
    if not torch.isfinite(budgets).all() or (budgets <= 0).any():
        raise ValueError(f"budgets must be finite token counts > 0, got {budgets.tolist()}")
    budgets = budgets.clamp(min=1.0)[:, None]
    steps = torch.arange(completion_mask.shape[1], device=values.device, dtype=values.dtype)[None, :]
    before = (steps + current - budgets).clamp(min=0.0)
    after = (steps + 1.0 + following - budgets).clamp(min=0.0)
    return (before - after) * mask / budgets


def task_reward_scale(rewards: Tensor, group_size: int, scale: str = "batch", min_scale: float = 0.1) -> Tensor:
    """Per-row standard deviation of the task reward, as TRL's GRPO divides its advantage by (``scale_rewards``):
    over the row's group of ``group_size`` consecutive rows (``"group"``), over the whole batch (``"batch"``), or 1
    (``"none"``); floored at ``min_scale``. Shapes ``(N,)`` → ``(N,)``."""
    if scale not in ("batch", "group", "none"):
        raise ValueError(f"scale must be 'batch', 'group' or 'none', got {scale!r}")
    if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    if scale == "none":
        return torch.ones_like(rewards)
    if scale == "batch":
        sigma = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
        sigma = sigma.expand_as(rewards)
    else:
        grouped = rewards.view(-1, group_size)
        spread = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        sigma = spread.expand_as(grouped).flatten()
    return sigma.clamp(min=float(min_scale))


def rewards_on_last_token(rewards: Tensor, completion_mask: Tensor, terminated: Tensor | None = None) -> Tensor:
    """Per-token rewards holding each row's sequence reward on its last token, 0 elsewhere: what a sequence-level
    reward is as a token reward. Rows that are not ``terminated`` (cut at the token limit) are paid nothing (their
    value bootstraps instead); an empty completion has no token to hold it.

    Shapes: ``rewards``/``terminated`` ``(B,)``, ``completion_mask`` ``(B, T)`` → ``(B, T)``."""
    check_completion_mask(completion_mask)
    batch, width = completion_mask.shape
    if rewards.shape != (batch,):
        raise ValueError(f"rewards must have shape ({batch},), got {tuple(rewards.shape)}")
    done = torch.ones(batch, dtype=torch.bool, device=rewards.device) if terminated is None else terminated.bool()
    lengths = completion_mask.to(torch.int64).sum(dim=1)
    last = torch.arange(width, device=rewards.device)[None, :] == (lengths[:, None] - 1)
    return torch.where(last & done[:, None], rewards[:, None], torch.zeros((), dtype=rewards.dtype,
                                                                             device=rewards.device))


def process_advantages(
    values: Tensor,
    rewards: Tensor,
    completion_mask: Tensor,
    sigma: Tensor,
    lam: float = 1.0,
    terminated: Tensor | None = None,
) -> Tensor:
    """Per-token task credit from a frozen task critic (``P(correct | s_t)``-like values), in the units of GRPO's
    task advantage::

        p_t = V(s_{t+1}) - V(s_t)       (V(s_L) = R on a terminated row, the bootstrap V(s_L) on a truncated one)
        A^proc_t = Σ_k λ^k p_{t+k} / σ

    ``p_t`` is how much token ``t`` moved the expected task reward (a process reward, as in PRIME/SwAP). With
    λ = 1, ``A^proc_t = (R - V(s_t)) / σ``: the outcome with the critic's value at ``s_t`` as baseline, which is
    unbiased for any critic (a state-dependent baseline) and has less variance the better the critic; at ``t = 0``
    it is GRPO's ``(R - mean_g R) / σ`` with ``V(s_0)`` in place of the group mean. With λ < 1 it leans on the
    critic (lower variance, biased by its errors). ``σ`` is the per-row reward scale of :func:`task_reward_scale`,
    so the term is in the units of the advantage it is added to. Truncated rows are not paid ``R``.

    Shapes: ``values`` ``(B, T+1)``, ``rewards``/``sigma``/``terminated`` ``(B,)``, ``completion_mask`` ``(B, T)``
    → ``(B, T)``, exactly 0 where the mask is 0.
    """
    batch = completion_mask.shape[0]
    if sigma.shape != (batch,):
        raise ValueError(f"sigma must have shape ({batch},), got {tuple(sigma.shape)}")
    token_rewards = rewards_on_last_token(rewards.to(values.dtype), completion_mask, terminated)
    advantages, _ = task_gae(values, token_rewards, completion_mask, 1.0, lam, terminated)
    return advantages / sigma.to(values.dtype)[:, None]


def group_centered(advantages: Tensor, completion_mask: Tensor, group_size: int) -> Tensor:
    """Per-token advantages shifted so that their first-token values average 0 within each group of ``group_size``
    consecutive rows (a prompt's completions)::

        Ã_t = A_t - mean_{j ∈ g} A^j_0

    For the process advantage ``A_t = (R - V(s_t)) / σ`` this takes out what every completion of a prompt shares:
    ``mean_g (R - V(s_0)) / σ``, which is 0 in expectation for an exact critic and is the critic's error at the
    prompt otherwise. A frozen critic that has gone stale (its value off by ``c`` at every state, as the policy's
    accuracy moved) shifts every token of every completion by ``-c/σ`` — a push on all sampled tokens, EOS included;
    centred, the credit is exactly invariant to such a shift, and what remains is how each token moved the outcome
    relative to the group's other completions. Rows with an empty mask take part with ``A_0 = 0``.

    Shapes: ``advantages`` ``(B, T)``, ``completion_mask`` ``(B, T)`` → ``(B, T)``, 0 where the mask is 0;
    ``B`` a multiple of ``group_size``.
    """
    mask = completion_mask.to(advantages.dtype)
    return (advantages - group_means(advantages[:, 0] * mask[:, 0], group_size)[:, None]) * mask


def group_means(values: Tensor, group_size: int) -> Tensor:
    """Each row's group mean: ``(B,)`` → ``(B,)``, groups of ``group_size`` consecutive rows."""
    batch = values.shape[0]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"{batch} rows do not split into groups of {group_size}")
    return values.view(-1, group_size).mean(dim=1).repeat_interleave(group_size)


def settled_mask(values: Tensor, completion_mask: Tensor, tolerance: float) -> Tensor:
    """Where the answer is settled: token ``t`` of a row is settled when the task critic's values ``V(s_t), …,
    V(s_{L-1})`` (the states from ``t`` to the last one before the end) all lie within ``tolerance`` of each other —
    neither this token nor any later one moves the expected task reward. The settled tokens are a suffix of each
    completion (the range of a suffix only shrinks), and the last token always is.

    Shapes: ``values`` ``(B, T+1)``, ``completion_mask`` ``(B, T)`` → ``(B, T)`` bool, False where the mask is 0.
    """
    check_completion_mask(completion_mask)
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be ≥ 0, got {tolerance!r}")
    mask = completion_mask.bool()
    states = values[:, :-1]
    highest = torch.where(mask, states, torch.full_like(states, -math.inf)).flip(1).cummax(dim=1).values.flip(1)
    lowest = torch.where(mask, states, torch.full_like(states, math.inf)).flip(1).cummin(dim=1).values.flip(1)
    return (highest - lowest <= tolerance) & mask


def length_outcome_statistics(
    outcomes: Tensor, passed: Tensor | None, group_size: int, scale: str = "batch", min_scale: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row statistics of sequence-level length outcomes ``S_i`` (``(N,)``) for :func:`normalize_length_credits`.

    Rows come in groups of ``group_size`` consecutive rows (the completions of one prompt). Returns ``(baseline,
    sigma, worst)``, each ``(N,)``: ``baseline`` the mean of ``S`` over the passing rows of the row's group (0 when none
    passes); ``sigma`` the standard deviation of ``S - baseline`` over the passing rows of the whole batch
    (``scale="batch"``: ``Σ (S - μ_g)² / Σ_g max(n_g - 1, 0)``, one degree of freedom spent per group mean, so that
    it is unbiased for the within-group variance) or of the group (``"group"``: ``/ (n_g - 1)``), but at least
    ``min_scale``, or 1 (``"none"``); ``worst`` the
    lowest passing ``S`` of the group (0 when none passes). The floor matters because per-token credits, unlike their
    group-centered sum, do not vanish when every passing completion has the same outcome: dividing them by a near-zero
    σ (one passing completion, or all of one length) would blow them up; with ``S`` a fraction of the expected length,
    0.1 caps the magnification at 10×. A multi-process trainer computes these on the gathered batch and hands each
    process its rows.
    """
    if scale not in ("batch", "group", "none"):
        raise ValueError(f"scale must be 'batch', 'group' or 'none', got {scale!r}")
    if not min_scale > 0:
        raise ValueError(f"min_scale must be positive, got {min_scale!r}")
    rows = outcomes.shape[0]
    if outcomes.dim() != 1:
        raise ValueError(f"outcomes must be 1-D (N,), got shape {tuple(outcomes.shape)}")
    if group_size < 1 or rows % group_size:
        raise ValueError(f"{rows} rows do not split into groups of group_size={group_size}")
    passed = torch.ones(rows, dtype=torch.bool, device=outcomes.device) if passed is None else passed.bool()
    if passed.shape != (rows,):
        raise ValueError(f"passed must have shape ({rows},), got {tuple(passed.shape)}")
    weight = passed.to(outcomes.dtype).view(-1, group_size)
    grouped = outcomes.view(-1, group_size)
    count = weight.sum(dim=1, keepdim=True)
    baseline = (grouped * weight).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
    centered = grouped - baseline
    if scale == "none":
        sigma = torch.ones_like(grouped)
    elif scale == "batch":
        # centering on each group's mean spends one degree of freedom per group that has a passing row
        dof = (count - 1.0).clamp(min=0.0).sum()
        variance = (centered.pow(2) * weight).sum() / dof.clamp(min=1.0)
        sigma = variance.sqrt().expand_as(grouped)
    else:
        variance = (centered.pow(2) * weight).sum(dim=1, keepdim=True) / (count - 1.0).clamp(min=1.0)
        sigma = variance.sqrt().expand_as(grouped)
    if scale != "none":
        sigma = sigma.clamp(min=float(min_scale))
    worst = torch.where(weight > 0, grouped, torch.full_like(grouped, math.inf)).min(dim=1, keepdim=True).values
    worst = torch.where(torch.isfinite(worst), worst, torch.zeros_like(worst))
    expand = (lambda t: t.expand_as(grouped).flatten())  # noqa: E731
    return expand(baseline), expand(sigma), expand(worst)


def normalize_length_credits(
    credits: Tensor,
    completion_mask: Tensor,
    group_size: int,
    passed: Tensor | None = None,
    scale: str = "batch",
    placement: str = "token",
    failed: str = "zero",
    min_scale: float = 0.1,
    statistics: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Put per-token length credits in the units of GRPO's group-normalized task advantage.

    With ``S_i = Σ_t c_{i,t}`` the sequence-level length outcome of row ``i`` and ``μ_g`` the mean of ``S`` over the
    passing rows of its group (``group_size`` consecutive rows, one prompt), the normalized credits are

        c'_{i,t} = (c_{i,t} - μ_g / L_i) / σ              ("token" placement: the critic decides where credit lands)
        c'_{i,t} = ((S_i - μ_g) / σ) / L_i                  ("sequence" placement: the same total, spread evenly)

    so that ``Σ_t c'_{i,t} = (S_i - μ_g) / σ`` either way: a completion one σ shorter than its passing siblings
    earns +1 in total, as one σ more reward earns +1 of GRPO's task advantage. ``σ`` is the standard deviation of
    ``S_i - μ_g`` over the passing rows of the whole batch (``scale="batch"``, as DLER normalizes rewards; tiny
    differences stay tiny), of the group (``"group"``, TRL's default for rewards), or 1 (``"none"``), never below
    ``min_scale`` (see :func:`length_outcome_statistics`). The "sequence" placement is the ablation that removes
    token-level credit assignment and keeps everything else.

    Rows that did not pass (``passed`` False) get no credit with ``failed="zero"``; with ``failed="worst"`` they get
    the least favourable outcome ``min(S_i, min_{passing j in group} S_j)`` (``min(S_i, 0)`` in a group with no
    passing row), centered and scaled like the others and spread evenly, so they are never paid for being short.

    ``statistics``: per-row ``(baseline, sigma, worst)`` from :func:`length_outcome_statistics`, when the groups and the
    batch span more rows than ``credits`` holds (several processes); then ``group_size`` and ``scale`` are not used.

    Shapes: ``credits``/``completion_mask`` ``(N, T)``, ``passed`` ``(N,)`` bool (``None``: all pass) → ``(N, T)``,
    exactly 0 where the mask is 0.
    """
    if placement not in ("token", "sequence"):
        raise ValueError(f"placement must be 'token' or 'sequence', got {placement!r}")
    if failed not in ("zero", "worst"):
        raise ValueError(f"failed must be 'zero' or 'worst', got {failed!r}")
    if credits.shape != completion_mask.shape:
        raise ValueError(f"credits {tuple(credits.shape)} and completion_mask {tuple(completion_mask.shape)} differ")
    rows = credits.shape[0]
    mask = completion_mask.to(credits.dtype)
    passed = torch.ones(rows, dtype=torch.bool, device=credits.device) if passed is None else passed.bool()
    if passed.shape != (rows,):
        raise ValueError(f"passed must have shape ({rows},), got {tuple(passed.shape)}")
    outcome = (credits * mask).sum(dim=1)
    if statistics is None:
        statistics = length_outcome_statistics(outcome, passed, group_size, scale, min_scale)
    baseline, sigma, worst_passing = (t.to(credits.dtype) for t in statistics)
    if baseline.shape != (rows,) or sigma.shape != (rows,) or worst_passing.shape != (rows,):
        raise ValueError(f"statistics must be three ({rows},) tensors, one entry per row of credits")
    lengths = mask.sum(dim=1).clamp(min=1.0)
    weight = passed.to(credits.dtype)
    if placement == "token":
        normalized = (credits - (baseline / lengths)[:, None] * mask) / sigma[:, None]
    else:
        normalized = ((outcome - baseline) / sigma / lengths)[:, None] * mask
    normalized = normalized * weight[:, None]
    if failed == "worst":
        worst = torch.minimum(outcome, worst_passing)
        failed_rows = ((worst - baseline) / sigma / lengths)[:, None] * mask
        normalized = normalized + failed_rows * (1.0 - weight)[:, None]
    return normalized * mask


def relative_length_advantages(
    values: Tensor,
    completion_mask: Tensor,
    gamma: float,
    group_size: int,
    lam: float = 1.0,
    terminated: Tensor | None = None,
    passed: Tensor | None = None,
    scale: str = "batch",
    placement: str = "token",
    failed: str = "zero",
    min_scale: float = 0.1,
) -> Tensor:
    """The scale-free length advantage: GAE (discount 1 in length space, ``λ``) over the normalized credits of
    :func:`normalize_length_credits` applied to :func:`relative_length_credits`::

        A_t = Σ_k λ^k c'_{t+k}

    With λ = 1, ``A_0`` is the completion's normalized length outcome ``(S_i - μ_g) / σ`` and ``A_t`` the part of it
    still to be decided after token ``t``; with λ = 0, ``A_t = c'_t``, the credit of token ``t`` alone. ``length_coef
    = 1`` therefore means: a completion one (batch) standard deviation shorter than its passing siblings earns as
    much, summed over its decisions, as one standard deviation of task reward earns in GRPO.

    Shapes: ``values`` ``(N, T+1)``, ``completion_mask`` ``(N, T)``, ``terminated``/``passed`` ``(N,)`` → ``(N, T)``.
    All ``N`` rows must be present (the groups and the batch statistics span them); under several processes gather
    first and slice after.
    """
    credits = relative_length_credits(values, completion_mask, gamma, terminated)
    normalized = normalize_length_credits(credits, completion_mask, group_size, passed, scale, placement, failed,
                                          min_scale)
    return place_length_advantages(normalized, completion_mask, lam, placement)


def place_length_advantages(
    normalized: Tensor, completion_mask: Tensor, lam: float, placement: str = "token"
) -> Tensor:
    """Turn normalized per-token length credits ``c'`` (:func:`normalize_length_credits`) into advantages::

        A_t = Σ_k λ^k c'_{t+k}          ("token": GAE, discount 1, over the credits the critic placed)
        A_t = Σ_k c'_k                   ("sequence", every λ: the completion's whole normalized outcome on each
                                          of its tokens, exactly as GRPO broadcasts its task advantage)

    The sequence placement is the ablation of token-level credit: running GAE over evenly spread credit would give
    token ``t`` only ``(L - t) / L`` of the outcome at λ = 1 (less at λ < 1), starving late decisions, which GRPO's own
    sequence-level advantage never does.

    Shapes: ``normalized``/``completion_mask`` ``(N, T)`` → ``(N, T)``, exactly 0 where the mask is 0.
    """
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam!r}")
    if placement == "sequence":
        mask = completion_mask.to(normalized.dtype)
        return (normalized * mask).sum(dim=1, keepdim=True) * mask
    if placement != "token":
        raise ValueError(f"placement must be 'token' or 'sequence', got {placement!r}")
    return discounted_cumsum(normalized, completion_mask, float(lam))


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (along ``dim``, or over everything when ``None``).

    An all-zero mask gives 0 rather than NaN.
    """
    mask = mask.to(values.dtype)
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``values`` over positions where ``mask`` is 1 (scalar). Bessel-corrected when ``unbiased``."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    count = mask.sum()
    sq = (((values - mean) * mask) ** 2).sum()
    denom = (count - 1.0) if unbiased else count
    return sq / denom.clamp(min=1.0)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Standardize ``values`` with the mean and std over the masked positions; padding stays exactly 0.

    ``(x - μ) / sqrt(σ² + eps)`` (``x / sqrt(σ² + eps)`` when ``shift_mean`` is False).
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean * torch.rsqrt(var + eps)
    return whitened * mask.to(values.dtype)
