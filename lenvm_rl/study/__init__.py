"""The length-method study: methods in a careful user's position, evaluation, statistics and the report.

The harness that runs it is :mod:`lenvm_rl.study.runner` (the ``lenvm-rl study`` job parses a recipe and calls it),
on the tasks registered in :mod:`lenvm_rl.study.tasks`; these modules are what it (and anyone comparing length
methods in their own code) builds on."""

from .evaluate import EvaluateAtSteps, evaluate_policy
from .methods import (
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
from .stats import (
    accuracy_at_tokens,
    jackknife_interval,
    paired_bootstrap,
    pareto_frontier,
    percentile_interval,
    student_t_quantile,
    t_interval,
    tokens_at_accuracy,
)

__all__ = [
    "EvaluateAtSteps",
    "METHODS",
    "SEQUENCE_LEVEL",
    "TOKEN_LEVEL",
    "MethodSpec",
    "RunPlan",
    "accuracy_at_tokens",
    "check_method_options",
    "evaluate_policy",
    "expand_normalizations",
    "jackknife_interval",
    "normalization_gaps",
    "normalization_of",
    "paired_bootstrap",
    "pareto_frontier",
    "percentile_interval",
    "plan_run",
    "run_fingerprint",
    "student_t_quantile",
    "t_interval",
    "tokens_at_accuracy",
]
