"""The length methods the study compares, each in the position a careful user would give it.

Every method is a way to build one RL run from the same starting point: which trainer, which reward functions,
which config overrides, as a function of its coefficient. Sequence-level methods add a length reward to the task
reward *before* TRL's normalization (``scale_rewards`` "group" or "batch", set per variant); LenVM methods add the
token-level length advantage *after* it (``lenvm_rl.trainer.grpo``).

========================  ======================================================================================
``none``                  GRPO with no length term
``linear``                linear penalty ``-coef · L / max_completion_length``
``kimi``                  Kimi k1.5 group length reward (:class:`~lenvm_rl.rewards.KimiLengthReward`)
``budget``                DLER-style truncation: the correctness reward is 0 past ``coef`` tokens
``gated_self_normalized`` Arora & Zanette 2025 (:class:`~lenvm_rl.rewards.SelfNormalizedLengthPenalty`)
``dapo_overlong``         TRL's DAPO soft overlong punishment (``trl.rewards.get_soft_overlong_punishment``), used as
                          is: 0 up to ``max_completion_length - coef`` tokens, then linear down to -1 (``coef`` is
                          its ``soft_punish_cache``, in tokens)
``cosine``                TRL's cosine length-scaled correctness schedule around the task's correctness reward
                          (:class:`~lenvm_rl.rewards.CosineScaledCorrectness`; TRL's own needs math answers),
                          ``max_len = coef`` tokens, TRL's default bounds
``lenvm``                 LenVM token-level length advantage, gated on correctness (relative units)
``lenvm_ungated``         the same without the gate
``lenvm_seq``             the ablation: same critic, gate, coefficient; every token carries the completion's whole
                          normalized length outcome, as GRPO broadcasts its advantage
``lenvm_value``           the v1 value-space LenVM advantage, gated
``lenvm_unbiased``        v3 length credit alone: the unbiased token credit (mean 0 at every state), gated
``lenvm_task``            v3: the unbiased length credit plus per-token task credit from a frozen task critic
                          pretrained on the starting policy's rollouts, added to GRPO's outcome advantage
``lenvm_settled``         v3 with the settled-answer charge: length credit in full once the task critic's value
                          stops moving, none before (the task credit weighs those tokens)
``grpo_task``             GRPO plus the per-token task credit, no length term (what the task credit does alone)
``lcpo_max``              budgets (L1's LCPO-Max): ``correct · clip(coef · (N - L) + 0.5, 0, 1)``
``lcpo_exact``            budgets (L1's LCPO-Exact): ``correct - coef · |N - L|``
``budget_gated``          budgets: correctness counts only within the prompt's budget, ``correct · 1[L ≤ N]``
``lenvm_budget``          budgets, token level: the change of the critic's predicted overshoot of ``N``,
                          ``Φ(s_t) = -max(0, t + l(s_t) - N) / N``, as the gated length term
``ppo_budget``            budgets in critic PPO: the same potential as shaping of the token rewards before the task
                          GAE (a terminal overshoot penalty spread over the tokens that caused it)
``ppo_none``              critic PPO (task critic GAE), no length term — the control of ``ppo_lenvm``
``ppo_lenvm``             critic PPO with the gated LenVM advantage
``ppo_linear``            critic PPO with the linear penalty in the reward — the sequence-level control of
                          ``ppo_lenvm`` on the same machinery
========================  ======================================================================================

A PPO variant may start from a task critic pretrained on the starting policy's rollouts (as the LenVM critic is):
the option ``task_critic_model_name_or_path: pretrained`` asks the study to fit one and use it. The task-credit
variants (``lenvm_task``, ``lenvm_settled``, ``grpo_task``) read that same pretrained critic, frozen, unless their
options name another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..rewards import (
    BudgetLengthReward,
    CosineScaledCorrectness,
    KimiLengthReward,
    LinearLengthPenalty,
    SelfNormalizedLengthPenalty,
    TargetLengthReward,
    TokenBudgetReward,
)

__all__ = ["MethodSpec", "RunPlan", "METHODS", "SEQUENCE_LEVEL", "TOKEN_LEVEL", "BUDGET_METHODS", "TOKEN_COUNT_COEFS",
           "STRICTER_WHEN_SMALLER", "NORMALIZATIONS",
           "plan_run",
           "check_method_options", "expand_normalizations", "normalization_of", "normalization_gaps",
           "run_fingerprint"]

SEQUENCE_LEVEL = ("linear", "kimi", "budget", "gated_self_normalized", "ppo_linear", "lcpo_max", "lcpo_exact",
                  "budget_gated", "dapo_overlong", "cosine")
TOKEN_LEVEL = ("lenvm", "lenvm_ungated", "lenvm_seq", "lenvm_value", "ppo_lenvm", "lenvm_unbiased", "lenvm_task",
               "lenvm_settled", "lenvm_budget", "ppo_budget")
# methods whose coefficient is a whole number of tokens, and those of them that get stricter as it shrinks
TOKEN_COUNT_COEFS = ("budget", "cosine", "dapo_overlong")
STRICTER_WHEN_SMALLER = ("budget", "cosine")
# the methods that read each prompt's token budget (a budget task's column)
BUDGET_METHODS = ("lcpo_max", "lcpo_exact", "budget_gated", "lenvm_budget", "ppo_budget")
# TRL's ``scale_rewards`` of the task advantage; "group" is TRL's default, "none" Arora & Zanette's own setting
NORMALIZATIONS = ("group", "batch", "none")


@dataclass(frozen=True)
class MethodSpec:
    """One method: display label, whether its coefficient matters, whether it needs the LenVM critic or a frozen
    task critic, its trainer (``"grpo"`` or ``"ppo"``), and its config overrides beyond the coefficient's."""

    label: str
    trainer: str = "grpo"
    uses_coef: bool = True
    uses_critic: bool = False
    uses_task_critic: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()


METHODS: dict[str, MethodSpec] = {
    "none": MethodSpec("no length term", uses_coef=False),
    "linear": MethodSpec("linear length penalty"),
    "kimi": MethodSpec("Kimi group length reward"),
    "budget": MethodSpec("token budget (truncation)"),
    "gated_self_normalized": MethodSpec("gated self-normalized (Arora & Zanette)"),
    "dapo_overlong": MethodSpec("DAPO soft overlong punishment (TRL)"),
    "cosine": MethodSpec("cosine length-scaled correctness (TRL's schedule)"),
    "lenvm": MethodSpec("LenVM token-level, gated", uses_critic=True),
    "lenvm_ungated": MethodSpec("LenVM token-level, ungated", uses_critic=True),
    "lenvm_seq": MethodSpec("LenVM sequence-level ablation, gated", uses_critic=True),
    "lenvm_value": MethodSpec("LenVM value-space (v1), gated", uses_critic=True),
    "lenvm_unbiased": MethodSpec("LenVM v3 unbiased token credit, gated", uses_critic=True,
                                 overrides=(("length_estimator", "unbiased"),)),
    "lenvm_task": MethodSpec("LenVM v3 + per-token task credit, gated", uses_critic=True, uses_task_critic=True,
                             overrides=(("length_estimator", "unbiased"), ("task_credit", "critic"))),
    "lenvm_settled": MethodSpec("LenVM v3 + task credit, settled-answer charge, gated", uses_critic=True,
                                uses_task_critic=True,
                                overrides=(("length_estimator", "unbiased"), ("task_credit", "critic"),
                                           ("length_charge", "settled"))),
    "grpo_task": MethodSpec("GRPO + per-token task credit, no length term", uses_coef=False, uses_task_critic=True,
                            overrides=(("task_credit", "critic"),)),
    "lcpo_max": MethodSpec("LCPO-Max budget reward (L1)"),
    "lcpo_exact": MethodSpec("LCPO-Exact budget reward (L1)"),
    "budget_gated": MethodSpec("correctness gated by the budget", uses_coef=False),
    "lenvm_budget": MethodSpec("LenVM predicted-overshoot budget credit, gated", uses_critic=True,
                               overrides=(("length_estimator", "budget"),)),
    "ppo_none": MethodSpec("critic PPO, no length term", trainer="ppo", uses_coef=False),
    "ppo_lenvm": MethodSpec("critic PPO + LenVM, gated", trainer="ppo", uses_critic=True),
    "ppo_linear": MethodSpec("critic PPO + linear length penalty", trainer="ppo"),
    "ppo_budget": MethodSpec("critic PPO + LenVM budget shaping", trainer="ppo", uses_critic=True,
                             overrides=(("length_estimator", "budget"),)),
}


# the option value asking the study for a task critic fitted to its own rollouts of the starting policy
PRETRAINED = "pretrained"


def reads_pretrained_task_critic(variant: dict[str, Any]) -> bool:
    """Whether a study variant reads the study's pretrained task critic: it asks for it
    (``task_critic_model_name_or_path: pretrained``), or its method needs a task critic and names none."""
    path = (variant.get("options") or {}).get("task_critic_model_name_or_path")
    return path == PRETRAINED or (METHODS[variant["method"]].uses_task_critic and path is None)


@dataclass
class RunPlan:
    """What one (method, coefficient) run needs: the trainer and config classes, the reward functions (the first
    one is always the correctness reward, which the LenVM gate reads), and config overrides."""

    trainer_class: type
    config_class: type
    reward_funcs: list[Callable[..., Any]]
    overrides: dict[str, Any]


def _classes(trainer: str) -> tuple[type, type]:
    if trainer == "ppo":
        from ..trainer.ppo import LenVMPPOConfig, LenVMPPOTrainer

        return LenVMPPOTrainer, LenVMPPOConfig
    from ..trainer.grpo import LenVMGRPOConfig, LenVMGRPOTrainer

    return LenVMGRPOTrainer, LenVMGRPOConfig


def check_method_options(method: str, options: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``method`` is known and every option is a field of its config."""
    if method not in METHODS:
        raise ValueError(f"{where}: unknown method {method!r}; choose from {sorted(METHODS)}")
    _, config_class = _classes(METHODS[method].trainer)
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{where}: {unknown} are not {config_class.__name__} fields (options must be trainer config "
                         "fields, e.g. scale_rewards, length_lam, length_scale)")


def plan_run(method: str, coef: float, task_rewards: Sequence[Callable[..., Any]], max_completion_length: int,
             critic_path: str | None, options: dict[str, Any] | None = None,
             success_threshold: float = 1.0, budget_column: str | None = None) -> RunPlan:
    """The :class:`RunPlan` of ``method`` at ``coef``. ``task_rewards[0]`` is the correctness reward; a completion
    is correct when it reaches ``success_threshold``, and that one definition is used by every gate (Kimi's and Arora
    & Zanette's correctness gates, LenVM's ``length_gate_threshold``) as by the study's evaluation. The other task
    rewards (format rewards, ...) are kept as they are. ``options`` are config overrides of the variant (e.g.
    ``scale_rewards: batch``), applied last; the task-credit methods need ``task_critic_model_name_or_path`` among
    them. The budget methods read each prompt's token budget from ``budget_column`` (a budget task's column) and
    are refused without one."""
    spec = METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    if method in BUDGET_METHODS and budget_column is None:
        raise ValueError(f"method {method!r} reads each prompt's token budget: use a budget task "
                         "(e.g. task: checked_parity_budget) or name the dataset's budget column (budget_column)")
    if not task_rewards:
        raise ValueError("the study needs at least one task reward function (the first one defines correctness)")
    correctness, others = task_rewards[0], list(task_rewards[1:])
    trainer_class, config_class = _classes(spec.trainer)
    rewards: list[Callable[..., Any]] = [correctness, *others]
    overrides: dict[str, Any] = {"length_mode": "none"}
    if method in ("linear", "ppo_linear"):
        rewards.append(LinearLengthPenalty(coef=coef, scale=max_completion_length))
    elif method == "kimi":
        rewards.append(KimiLengthReward(correctness, coef=coef, threshold=success_threshold))
    elif method == "budget":
        if coef < 1 or coef != int(coef):
            raise ValueError(f"budget: the coefficient is a token budget and must be a whole number ≥ 1, got {coef}")
        rewards[0] = TokenBudgetReward(correctness, budget=int(coef))
    elif method in ("lcpo_max", "budget_gated"):
        rewards.append(BudgetLengthReward(correctness, mode="max" if method == "lcpo_max" else "gated",
                                          budget_column=budget_column, alpha=coef if method == "lcpo_max" else 1.0,
                                          threshold=success_threshold))
    elif method == "lcpo_exact":
        rewards.append(TargetLengthReward(coef=coef, target_column=budget_column))
    elif method in ("dapo_overlong", "cosine"):
        if coef < 1 or coef != int(coef) or (method == "dapo_overlong" and coef > max_completion_length):
            limit = f" and at most max_completion_length ({max_completion_length})" if method == "dapo_overlong" else ""
            raise ValueError(f"{method}: the coefficient is a number of tokens and must be a whole number ≥ 1{limit}, "
                             f"got {coef}")
        if method == "dapo_overlong":
            from trl.rewards import get_soft_overlong_punishment

            rewards.append(get_soft_overlong_punishment(max_completion_len=max_completion_length,
                                                        soft_punish_cache=int(coef)))
        else:
            rewards[0] = CosineScaledCorrectness(correctness, max_len=int(coef), threshold=success_threshold)
    elif method == "gated_self_normalized":
        rewards.append(SelfNormalizedLengthPenalty(correctness, coef=coef, threshold=success_threshold))
    elif spec.uses_critic:
        if critic_path is None:
            raise ValueError(f"method {method!r} needs a LenVM critic")
        overrides = {"length_mode": "advantage", "length_coef": coef, "critic_model_name_or_path": critic_path,
                     "length_gate": "none" if method == "lenvm_ungated" else "success",
                     "length_gate_threshold": success_threshold}
        if method == "lenvm_seq":
            overrides["length_credit"] = "sequence"
        if method == "lenvm_value":
            overrides["length_units"] = "value"
        if method in ("lenvm_budget", "ppo_budget"):
            overrides["budget_column"] = budget_column
        if method == "ppo_budget":  # shaping has no gate: every completion's overshoot is charged
            overrides["length_mode"] = "shaping"
            del overrides["length_gate"], overrides["length_gate_threshold"]
    if spec.uses_task_critic and not (options or {}).get("task_critic_model_name_or_path"):
        raise ValueError(f"method {method!r} needs a task critic: the option task_critic_model_name_or_path")
    overrides.update(dict(spec.overrides))
    if spec.trainer == "ppo":
        overrides.setdefault("task_critic_learning_rate", 1e-3)
    overrides.update(options or {})
    return RunPlan(trainer_class, config_class, rewards, overrides)


def _normalized_by_trl(method: str) -> bool:
    """GRPO methods with a coefficient: their task advantage is TRL's, so its normalization is a real choice (critic
    PPO whitens its GAE advantage instead, and ``none`` is the shared anchor)."""
    spec = METHODS[method]
    return spec.trainer == "grpo" and spec.uses_coef


def normalization_of(variant: dict[str, Any]) -> str | None:
    """The ``scale_rewards`` a variant's task advantage runs under (TRL's default "group"), or None where TRL's
    normalization does not apply (critic PPO, the no-length-term anchor)."""
    if not _normalized_by_trl(variant["method"]):
        return None
    return str((variant.get("options") or {}).get("scale_rewards", "group"))


def expand_normalizations(methods: dict[str, dict[str, Any]], normalizations: Sequence[str] | None
                          ) -> dict[str, dict[str, Any]]:
    """Each GRPO variant with a coefficient that does not fix ``scale_rewards`` itself becomes one variant per
    normalization, labelled ``<label>/<normalization>``, so that every method (token-level ones included) runs under
    every normalization the study gives any other. Other variants are kept as they are, in order."""
    if not normalizations:
        return dict(methods)
    unknown = sorted(set(normalizations) - set(NORMALIZATIONS))
    if unknown:
        raise ValueError(f"normalizations: {unknown} are not TRL scale_rewards values; choose from {NORMALIZATIONS}")
    expanded: dict[str, dict[str, Any]] = {}
    for label, variant in methods.items():
        options = variant.get("options") or {}
        if not _normalized_by_trl(variant["method"]) or "scale_rewards" in options:
            expanded[label] = variant
            continue
        for normalization in normalizations:
            name = f"{label}/{normalization}"
            if name in methods:
                raise ValueError(f"methods: {label!r} expands to {name!r}, which is already a variant")
            expanded[name] = {**variant, "options": {**options, "scale_rewards": normalization}}
    return expanded


def normalization_gaps(methods: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Method → the normalizations some other method of the study runs under and it does not (empty when fair)."""
    used: dict[str, set[str]] = {}
    for variant in methods.values():
        normalization = normalization_of(variant)
        if normalization is not None:
            used.setdefault(variant["method"], set()).add(normalization)
    every = set().union(*used.values()) if used else set()
    return {method: sorted(every - have) for method, have in used.items() if every - have}


def run_fingerprint(variant: dict[str, Any], coef: float) -> dict[str, Any]:
    """What makes a finished run the run a variant asks for: its method, options and coefficient (the seed and the
    study-wide settings are checked elsewhere)."""
    return {"method": variant["method"], "options": dict(sorted((variant.get("options") or {}).items())),
            "coef": float(coef)}
