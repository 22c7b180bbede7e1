"""Sequence-level length baselines as TRL reward functions, so every comparison runs on the same trainer.

Each is a callable ``f(prompts, completions, completion_ids, **kwargs) -> list[float]`` that ``GRPOTrainer`` (and
``LenVMGRPOTrainer``) accept in ``reward_funcs`` next to the task reward; TRL sums the rewards (with
``reward_weights``) before group normalization. Lengths count completion tokens, EOS included, like the rest of
the package. TRL's own soft overlong punishment (``trl.rewards.get_soft_overlong_punishment``) works as is.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "LinearLengthPenalty",
    "KimiLengthReward",
    "TargetLengthReward",
    "TokenBudgetReward",
    "BudgetLengthReward",
    "CosineScaledCorrectness",
    "SelfNormalizedLengthPenalty",
    "resolve_reward_function",
    "resolve_reward_functions",
]

RewardFunction = Callable[..., Sequence[float | None]]


def _lengths(completion_ids: Sequence[Sequence[int]]) -> list[int]:
    return [len(ids) for ids in completion_ids]


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class LinearLengthPenalty:
    """``r = -coef · L / scale``: every token costs the same, whatever the prompt (the classic length penalty).

    Args:
        coef: penalty per ``scale`` tokens (≥ 0).
        scale: tokens per unit of penalty, e.g. ``max_completion_length`` so that ``coef`` is the penalty of a
            maximal completion.
    """

    __name__ = "linear_length_penalty"

    def __init__(self, coef: float = 1.0, scale: float = 1.0):
        if not math.isfinite(coef) or coef < 0:
            raise ValueError(f"coef must be a finite number ≥ 0, got {coef!r}")
        self.coef, self.scale = float(coef), _check_positive("scale", scale)

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        return [-self.coef * length / self.scale for length in _lengths(completion_ids)]


class _GroupLengthReward:
    """A correctness-aware length reward computed within each group of completions of one prompt: the completions
    of equal prompts within one call (under several processes TRL may split a group, and the local part is used).
    ``correctness`` is a reward function returning 1 for correct and 0 for wrong, called with the same arguments;
    ``threshold`` is the reward that counts as correct."""

    def __init__(self, correctness: RewardFunction, coef: float, threshold: float = 0.5):
        if not callable(correctness):
            raise ValueError("correctness must be a reward function returning 1 (correct) or 0 (wrong)")
        if not math.isfinite(coef) or coef < 0:
            raise ValueError(f"coef must be a finite number ≥ 0, got {coef!r}")
        self.correctness, self.coef, self.threshold = correctness, float(coef), float(threshold)

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        correct = self.correctness(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        passed = [c is not None and c >= self.threshold for c in correct]
        lengths = _lengths(completion_ids)
        groups: dict[str, list[int]] = defaultdict(list)
        for index, prompt in enumerate(prompts):
            groups[repr(prompt)].append(index)
        rewards = [0.0] * len(lengths)
        for members in groups.values():
            for index, reward in self._group_rewards([lengths[i] for i in members],
                                                     [passed[i] for i in members]).items():
                rewards[members[index]] = reward
        return rewards

    def _group_rewards(self, lengths: list[int], passed: list[bool]) -> dict[int, float]:
        raise NotImplementedError


class KimiLengthReward(_GroupLengthReward):
    """The group-relative length reward of Kimi k1.5: within the completions of one prompt,
    ``λ = 0.5 - (L - L_min) / (L_max - L_min)``; a correct completion earns ``coef · λ``, a wrong one
    ``coef · min(0, λ)`` (so being short never pays a wrong answer). All equal lengths give 0.

    ``correctness`` is a reward function returning 1 for correct and 0 for wrong (called with the same arguments).
    Groups are the completions of equal prompts within one call; under several processes TRL may split a group, and
    the local part is used.
    """

    __name__ = "kimi_length_reward"

    def __init__(self, correctness: RewardFunction, coef: float = 1.0, threshold: float = 0.5):
        super().__init__(correctness, coef, threshold)

    def _group_rewards(self, lengths: list[int], passed: list[bool]) -> dict[int, float]:
        shortest, longest = min(lengths), max(lengths)
        rewards = {}
        for index, (length, ok) in enumerate(zip(lengths, passed, strict=True)):
            lam = 0.0 if longest == shortest else 0.5 - (length - shortest) / (longest - shortest)
            rewards[index] = self.coef * (lam if ok else min(0.0, lam))
        return rewards


class TargetLengthReward:
    """An L1-style target-length reward: ``r = -coef · |L - L_target| / scale``.

    The target is a fixed ``target_length`` or, per prompt, a dataset column named by ``target_column`` (TRL passes
    dataset columns to reward functions as keyword arguments).
    """

    __name__ = "target_length_reward"

    def __init__(self, coef: float = 1.0, target_length: int | None = None, target_column: str | None = None,
                 scale: float = 1.0):
        if (target_length is None) == (target_column is None):
            raise ValueError("give exactly one of target_length (fixed) or target_column (per prompt)")
        if target_length is not None:
            _check_positive("target_length", target_length)
        if not math.isfinite(coef) or coef < 0:
            raise ValueError(f"coef must be a finite number ≥ 0, got {coef!r}")
        self.coef, self.target_length, self.target_column = float(coef), target_length, target_column
        self.scale = _check_positive("scale", scale)

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        if self.target_column is not None:
            if self.target_column not in kwargs:
                raise ValueError(f"dataset column {self.target_column!r} (target lengths) was not passed to the reward")
            targets = [float(t) for t in kwargs[self.target_column]]
        else:
            targets = [float(self.target_length)] * len(completion_ids)
        lengths = _lengths(completion_ids)
        return [-self.coef * abs(length - target) / self.scale for length, target in zip(lengths, targets, strict=True)]


class TokenBudgetReward:
    """A hard token budget: the task reward when ``L ≤ budget``, 0 past it."""

    __name__ = "token_budget_reward"

    def __init__(self, task_reward: RewardFunction, budget: int):
        if not callable(task_reward):
            raise ValueError("task_reward must be a reward function")
        if not (isinstance(budget, int) and budget >= 1):
            raise ValueError(f"budget must be a positive number of tokens, got {budget!r}")
        self.task_reward, self.budget = task_reward, budget

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float | None]:
        task = self.task_reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        return [reward if length <= self.budget else 0.0 for reward, length in
                zip(task, _lengths(completion_ids), strict=True)]


class BudgetLengthReward:
    """Per-prompt token budgets ``N`` (a dataset column) as a term added to a 0/1 correctness reward, in the two
    sequence-level forms the budget literature trains with:

    * ``mode="max"`` (L1's LCPO-Max, arXiv 2503.04697): the total ``correct · clip(α (N - L) + δ, 0, 1)``, so the
      term is ``correct · (clip(α (N - L) + δ, 0, 1) - 1)``: a correct answer keeps its reward well inside the budget
      and loses it smoothly past it (``α`` per token, ``δ`` the reward at exactly ``N``);
    * ``mode="gated"``: correctness counts only within the budget, total ``correct · 1[L ≤ N]``, term
      ``-correct · 1[L > N]``.

    (LCPO-Exact, ``correct - α |N - L|``, is :class:`TargetLengthReward` with ``target_column`` and ``coef = α``.)
    A wrong answer is never paid for its length. ``correctness`` is called with the same arguments (≥ ``threshold``
    counts as correct).
    """

    __name__ = "budget_length_reward"

    def __init__(self, correctness: RewardFunction, mode: str = "max", budget_column: str = "budget",
                 alpha: float = 0.01, delta: float = 0.5, threshold: float = 0.5):
        if not callable(correctness):
            raise ValueError("correctness must be a reward function")
        if mode not in ("max", "gated"):
            raise ValueError(f"mode must be 'max' or 'gated', got {mode!r}")
        self.correctness, self.mode, self.budget_column = correctness, mode, budget_column
        self.alpha, self.threshold = _check_positive("alpha", alpha), float(threshold)
        if not (isinstance(delta, (int, float)) and 0.0 <= delta <= 1.0):
            raise ValueError(f"delta must lie in [0, 1], got {delta!r}")
        self.delta = float(delta)

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        if self.budget_column not in kwargs:
            raise ValueError(f"dataset column {self.budget_column!r} (token budgets) was not passed to the reward; "
                             f"columns passed: {sorted(kwargs)}")
        budgets = [float(b) for b in kwargs[self.budget_column]]
        scores = self.correctness(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        terms = []
        for score, length, budget in zip(scores, _lengths(completion_ids), budgets, strict=True):
            correct = 1.0 if score is not None and score >= self.threshold else 0.0
            if self.mode == "max":
                terms.append(correct * (min(1.0, max(0.0, self.alpha * (budget - length) + self.delta)) - 1.0))
            else:
                terms.append(-correct if length > budget else 0.0)
        return terms


class CosineScaledCorrectness:
    """TRL's cosine length-scaled correctness reward (``trl.rewards.get_cosine_scaled_reward``; Yeo et al. 2025,
    "Demystifying Long Chain-of-Thought Reasoning", App. C.1) around any 0/1 correctness reward, for tasks whose
    answers are not math (TRL's decides correctness with ``math_verify`` on a ``solution`` column)::

        r = v_min + ½ (v_max - v_min) (1 + cos(π · min(L / max_len, 1)))

    with ``(v_min, v_max) = (min_value_correct, max_value_correct)`` for a correct completion (shorter earns more) and
    ``(max_value_wrong, min_value_wrong)`` for a wrong one (shorter is penalized more, which keeps exploring).
    Defaults and the clamp at ``max_len`` are TRL's. It *replaces* the correctness reward (it is the whole reward);
    a ``None`` score (unscorable) stays ``None``.
    """

    __name__ = "cosine_scaled_reward"

    def __init__(self, correctness: RewardFunction, max_len: int, min_value_wrong: float = -1.0,
                 max_value_wrong: float = -0.5, min_value_correct: float = 0.5, max_value_correct: float = 1.0,
                 threshold: float = 0.5):
        if not callable(correctness):
            raise ValueError("correctness must be a reward function")
        if not (isinstance(max_len, int) and max_len >= 1):
            raise ValueError(f"max_len must be a positive number of tokens, got {max_len!r}")
        self.correctness, self.max_len, self.threshold = correctness, max_len, float(threshold)
        self.correct_bounds = (float(min_value_correct), float(max_value_correct))
        self.wrong_bounds = (float(max_value_wrong), float(min_value_wrong))

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float | None]:
        scores = self.correctness(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        rewards: list[float | None] = []
        for score, length in zip(scores, _lengths(completion_ids), strict=True):
            if score is None:
                rewards.append(None)
                continue
            low, high = self.correct_bounds if score >= self.threshold else self.wrong_bounds
            cosine = math.cos(math.pi * min(length / self.max_len, 1.0))
            rewards.append(low + 0.5 * (high - low) * (1.0 + cosine))
        return rewards


class SelfNormalizedLengthPenalty(_GroupLengthReward):
    """The correctness-gated, per-prompt self-normalized length penalty of Arora & Zanette (2025, "Training language
    models to reason efficiently"): a correct completion of length ``L`` earns

        r = -coef · sigmoid((L - mean_L) / std_L)

    where ``mean_L`` and ``std_L`` are over the *correct* completions of the same prompt in the batch; a wrong one
    earns 0. Added to a 0/1 correctness reward this is their ``1{correct} · (1 - α σ(...))`` with ``α = coef``: the
    shortest correct answers of each prompt are preferred, wrong answers are never paid for being short, and the
    penalty is relative to what the prompt needs. ``std_L = 0`` (one correct completion, or all of one length) gives
    ``sigmoid(0)``: the same penalty for every correct completion of that prompt, i.e. no length preference.

    ``correctness`` is a reward function returning 1 for correct and 0 for wrong (called with the same arguments).
    Groups are the completions of equal prompts within one call (as for :class:`KimiLengthReward`).
    """

    __name__ = "self_normalized_length_penalty"

    def __init__(self, correctness: RewardFunction, coef: float = 0.2, threshold: float = 0.5):
        super().__init__(correctness, coef, threshold)

    def _group_rewards(self, lengths: list[int], passed: list[bool]) -> dict[int, float]:
        good = [length for length, ok in zip(lengths, passed, strict=True) if ok]
        if not good:
            return {}
        mean = sum(good) / len(good)
        std = math.sqrt(sum((x - mean) ** 2 for x in good) / len(good))
        return {index: -self.coef / (1.0 + math.exp(-((length - mean) / std if std > 0 else 0.0)))
                for index, (length, ok) in enumerate(zip(lengths, passed, strict=True)) if ok}


def resolve_reward_function(name: str) -> RewardFunction:
    """One reward function from its name: a TRL built-in (``accuracy_reward``, ...), a :mod:`lenvm_rl.tasks` reward
    (``arithmetic_correctness``, ...), or an import path ``package.module:function`` (also ``package.module.function``).
    The current directory is importable, so a user's ``my_rewards.py`` next to the recipe works. Raises ``ValueError``
    naming the path and what went wrong."""
    import importlib
    import os
    import sys

    builtins = _builtin_rewards()
    if name in builtins:
        return builtins[name]
    if ":" in name:
        module_path, _, attribute = name.partition(":")
    elif "." in name:
        module_path, _, attribute = name.rpartition(".")
    else:
        raise ValueError(f"unknown reward function {name!r}; use one of {sorted(builtins)} or an import path "
                         "'module:function'")
    if not module_path or not attribute:
        raise ValueError(f"reward function path {name!r} must look like 'module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        function = getattr(importlib.import_module(module_path), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import reward function {name!r}: {error}") from error
    if not callable(function):
        raise ValueError(f"reward function {name!r} is a {type(function).__name__}, not a callable")
    return function


def resolve_reward_functions(names: Sequence[str] | None) -> list[RewardFunction]:
    """:func:`resolve_reward_function` for each name; an empty list is an error."""
    if not names:
        raise ValueError("no reward function given: set reward_funcs (e.g. [accuracy_reward] or my_module:my_reward)")
    return [resolve_reward_function(name) for name in names]


def _builtin_rewards() -> dict[str, RewardFunction]:
    from trl import rewards as trl_rewards

    from . import tasks

    registry = {name: getattr(trl_rewards, name) for name in ("accuracy_reward", "reasoning_accuracy_reward",
                                                              "think_format_reward") if hasattr(trl_rewards, name)}
    registry.update(tasks.REWARD_FUNCTIONS)
    return registry
