"""Pre-registration: the rule that picks a confirmatory study's headline pair from a sweep, fixed before it runs.

A study that compares one token-level variant with the best of many noisy baselines per bootstrap replicate is biased
toward the baselines; one that reads the best of many token-level variants afterwards is biased toward them. So the
sweep (its own seeds) chooses, by :data:`RULE`, exactly one comparator and one token-level variant with their grids,
and the confirmatory study (other seeds, ≥ 5) compares exactly those two. :func:`choose_pair` applies the rule to a
sweep's :class:`~lenvm_rl.study.report.StudyTable`; ``lenvm-rl preregister`` writes the confirmatory recipe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .methods import (
    BUDGET_METHODS,
    METHODS,
    PRETRAINED,
    SEQUENCE_LEVEL,
    STRICTER_WHEN_SMALLER,
    TOKEN_COUNT_COEFS,
    TOKEN_LEVEL,
)
from .report import ADHERENCE_BAR, StudyTable, _frontier
from .stats import tokens_at_accuracy

__all__ = ["RULE", "BUDGET_RULE", "ABLATIONS", "GRID_RATIO", "BUDGET_RATIO", "PairChoice", "BudgetChoice",
           "choose_pair", "choose_budget_coefficients", "confirmatory_grid"]

# Variants that answer "does token placement matter", not "which method is best": never a headline candidate.
ABLATIONS = ("lenvm_seq",)
# token-level methods whose ablation (the same settings, sequence placement) the confirmatory study runs
ABLATED = ("lenvm", "lenvm_unbiased", "lenvm_task", "lenvm_settled")
GRID_RATIO = 2.0
BUDGET_RATIO = 1.5

RULE = (
    "On the sweep, with a0 the no-length-term accuracy: every variant's tokens at accuracy a0 − {drop} on its "
    "frontier (anchored at its trainer family's no-length-term point; +inf where the frontier does not reach it). "
    "Comparator: the sequence-level variant with the fewest; token-level: the token-level variant (ablations "
    "excluded) with the fewest; ties broken by tokens at a0 − 2·{drop}, then by label. Grid of each: c* × "
    "(1/4, 1/2, 1, 2) with c* the sweep coefficient with the fewest tokens among the variant's points at or above "
    "the target accuracy (its weakest coefficient when none is); token budgets c* × (2.25, 1.5, 1, 1/1.5), rounded "
    "(with {points} points: the last {points} of each). "
    "The ablation (lenvm_seq under the token-level variant's options) runs on the token-level grid, as secondary."
)


@dataclass
class PairChoice:
    """What :func:`choose_pair` picked, with the numbers it picked on."""

    token_level: str
    comparator: str
    token_level_grid: list[float]
    comparator_grid: list[float]
    tokens: dict[str, float]
    target_accuracy: float
    token_level_candidates: int
    comparator_candidates: int


def confirmatory_grid(table: StudyTable, label: str, accuracy: np.ndarray, tokens: np.ndarray,
                      target: float, points: int = 4) -> list[float]:
    """The rule's grid for ``label``: ratio 2 around the sweep's most aggressive coefficient that held ``target``,
    ``points`` coefficients ending one step past it (4: ``c* × (1/4, 1/2, 1, 2)``; 3: ``c* × (1/2, 1, 2)``)."""
    if points < 2:
        raise ValueError(f"a confirmatory grid needs ≥ 2 points, got {points}")
    steps = range(2 - points, 2)
    indices = table.indices(label)
    holding = [i for i in indices if accuracy[i] >= target]
    budget = table.method(label) in STRICTER_WHEN_SMALLER
    if holding:
        center = min(holding, key=lambda i: tokens[i])
    else:  # the weakest coefficient (largest budget, smallest coefficient)
        center = max(indices, key=lambda i: table.configs[i][1]) if budget else min(indices,
                                                                                   key=lambda i: table.configs[i][1])
    coef = table.configs[center][1]
    if budget:
        return [float(max(1, round(coef * BUDGET_RATIO ** -k))) for k in steps]
    if table.method(label) in TOKEN_COUNT_COEFS:
        return [float(max(1, round(coef * GRID_RATIO ** k))) for k in steps]
    return [coef * GRID_RATIO ** k for k in steps]


def choose_pair(table: StudyTable, drop: float = 0.01, token_level_methods: Sequence[str] | None = None,
                grid_points: int = 4) -> PairChoice:
    """Apply :data:`RULE` to a sweep's finished runs (means over its seeds and prompts). ``token_level_methods``
    restricts the token-level candidates to those methods (a study of one version of the method; the restriction
    goes into the pre-registration record)."""
    accuracy = np.nanmean(table.metrics["correct"], axis=(1, 2))
    tokens = np.nanmean(table.metrics["tokens"], axis=(1, 2))
    none = table.none_index()
    target = float(accuracy[none] - drop)

    def needed(label: str, at: float) -> float:
        value = tokens_at_accuracy(_frontier(table, label, accuracy, tokens), at)
        return value if math.isfinite(value) else math.inf

    def best(candidates: list[str]) -> str:
        if not candidates:
            raise ValueError("the sweep has no finished variant of this kind to choose from")
        return min(candidates, key=lambda label: (needed(label, target), needed(label, target - drop), label))

    labels = table.labels()
    sequence = [label for label in labels if table.method(label) in SEQUENCE_LEVEL]
    token = [label for label in labels if table.method(label) in TOKEN_LEVEL and table.method(label) not in ABLATIONS
             and (token_level_methods is None or table.method(label) in token_level_methods)]
    comparator, token_level = best(sequence), best(token)
    return PairChoice(
        token_level=token_level, comparator=comparator,
        token_level_grid=confirmatory_grid(table, token_level, accuracy, tokens, target, grid_points),
        comparator_grid=confirmatory_grid(table, comparator, accuracy, tokens, target, grid_points),
        tokens={label: needed(label, target) for label in sequence + token}, target_accuracy=target,
        token_level_candidates=len(token), comparator_candidates=len(sequence))


def confirmatory_methods(table: StudyTable, choice: PairChoice, secondary: Sequence[str] = (), grid_points: int = 4
                         ) -> dict[str, dict[str, Any]]:
    """The confirmatory study's variants: the anchors, the pair on its grids, the token-level variant's ablation,
    and the ``secondary`` sweep variants (each on the rule's grid for it; reported, never the headline)."""
    variants: dict[str, dict[str, Any]] = {"none": {"method": "none"}}
    chosen = table.variants[choice.token_level]
    if METHODS[chosen["method"]].trainer == "ppo":
        task_critic = (chosen.get("options") or {}).get("task_critic_model_name_or_path")
        variants["ppo_none"] = {"method": "ppo_none", **({"options": {"task_critic_model_name_or_path": task_critic}}
                                                          if task_critic else {})}
    for label, grid in ((choice.comparator, choice.comparator_grid), (choice.token_level, choice.token_level_grid)):
        variant = table.variants[label]
        variants[label] = {"method": variant["method"], "grid": grid, "options": dict(variant.get("options") or {})}
    if chosen["method"] in ABLATED:
        # the ablation keeps everything of the chosen variant (its method's settings too) but the token placement
        options = {**dict(METHODS[chosen["method"]].overrides), **dict(chosen.get("options") or {})}
        if METHODS[chosen["method"]].uses_task_critic:
            options.setdefault("task_critic_model_name_or_path", PRETRAINED)
        suffix = f"/{options['scale_rewards']}" if "scale_rewards" in options else ""
        variants[f"lenvm_seq{suffix}"] = {"method": "lenvm_seq", "grid": choice.token_level_grid, "options": options}
    accuracy = np.nanmean(table.metrics["correct"], axis=(1, 2))
    tokens = np.nanmean(table.metrics["tokens"], axis=(1, 2))
    for label in secondary:
        if label not in table.variants:
            raise ValueError(f"secondary variant {label!r} is not a variant of the sweep ({sorted(table.variants)})")
        variant = dict(table.variants[label])
        if METHODS[variant["method"]].uses_coef:
            variant["grid"] = confirmatory_grid(table, label, accuracy, tokens, choice.target_accuracy, grid_points)
        variants.setdefault(label, variant)
    return variants


BUDGET_RULE = (
    "On a budget task's sweep, for each budget method: the coefficient with the highest accuracy at the tightest "
    "budget (N = {tightest}) among its coefficients whose adherence (L ≤ N) over all budgets is ≥ {bar:g}; its "
    "highest-adherence coefficient when none is (ties: the weakest coefficient). The confirmatory study runs those "
    "coefficients only, with the anchors. Token-level: the sweep's headline_method ({headline}). Comparator: the "
    "LCPO variant (lcpo_max, lcpo_exact) whose chosen coefficient ranks first by (adherence ≥ {bar:g}, then accuracy "
    "at N = {tightest} if so, else adherence). Targets: the issue's (the best system at N = {tightest} ≥ 5× the "
    "truncated starting policy at ≥ {bar:.0%} adherence; the token-level credit reaching the comparator's final "
    "adherence with ≤ 0.6× its RL samples, or beating its accuracy at equal adherence)."
)
LCPO = ("lcpo_max", "lcpo_exact")


@dataclass
class BudgetChoice:
    """What :func:`choose_budget_coefficients` picked: one coefficient per budget variant, with its numbers."""

    coefficients: dict[str, float]
    adherence: dict[str, float]
    tightest_accuracy: dict[str, float]
    comparator: str
    tightest: int


def choose_budget_coefficients(table: StudyTable, budgets: Sequence[int]) -> BudgetChoice:
    """Apply :data:`BUDGET_RULE` to a budget sweep. ``budgets[p]`` is evaluation prompt ``p``'s token budget; the
    table's ``within_budget`` and ``correct`` metrics are ``(C, S, P)``, averaged here over seeds and prompts."""
    budgets_array = np.asarray(budgets)
    if budgets_array.shape != (table.prompts,):
        raise ValueError(f"budgets: one per evaluation prompt ({table.prompts}), got {budgets_array.shape}")
    if "within_budget" not in table.metrics:
        raise ValueError("the sweep's runs have no within_budget metric: was it a budget task?")
    tightest = int(budgets_array.min())
    adherence = np.nanmean(table.metrics["within_budget"], axis=(1, 2))
    tight_accuracy = np.nanmean(table.metrics["correct"][..., budgets_array == tightest], axis=(1, 2))

    def rank(index: int) -> tuple[bool, float]:
        meets = bool(adherence[index] >= ADHERENCE_BAR)
        return meets, float(tight_accuracy[index] if meets else adherence[index])

    chosen: dict[str, int] = {}
    for label in table.labels():
        if table.method(label) in BUDGET_METHODS:
            indices = table.indices(label)
            chosen[label] = max(indices, key=lambda i: (rank(i), -indices.index(i)))
    lcpo = [label for label in chosen if table.method(label) in LCPO]
    if not lcpo:
        raise ValueError(f"the sweep has no finished LCPO variant ({', '.join(LCPO)}) to compare with")
    comparator = max(lcpo, key=lambda label: (rank(chosen[label]), -lcpo.index(label)))
    return BudgetChoice(coefficients={label: table.configs[i][1] for label, i in chosen.items()},
                        adherence={label: float(adherence[i]) for label, i in chosen.items()},
                        tightest_accuracy={label: float(tight_accuracy[i]) for label, i in chosen.items()},
                        comparator=comparator, tightest=tightest)
