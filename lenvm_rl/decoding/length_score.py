"""LIFEBench length-instruction metrics: length deviation and length score for the three constraint types.

LIFEBench (Zhang et al., 2025, "LIFEBench: Evaluating Length Instruction Following in Large Language Models") scores
an output of length ``L`` against a constraint ``T`` through the relative **length deviation**

    LD = (L - T) / T

and the **length score** (0 … 100), asymmetric because falling short is penalized harder than overshooting:

    f(LD) = 100 · exp(k1 · LD)    if LD < 0        (k1 = 5)
            100 · exp(-k2 · LD)   if LD ≥ 0        (k2 = 2)

    equal_to:  S = f(LD)
    at_most:   S = 100 if LD ≤ 0 else f(LD)
    at_least:  S = 100 if LD ≥ 0 else f(LD)

``LD`` is a fraction here (the paper's definition); the benchmark reports deviations as percentages, so
:func:`summarize_length_control` does too. LIFEBench counts words (characters for Chinese); these functions work in
any unit — ``lenvm-rl eval-length-control`` feeds them token counts with EOS included, the unit of docs/method.md.
Pure functions: no model, no tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "CONSTRAINT_TYPES",
    "check_constraint",
    "length_deviation",
    "length_score",
    "summarize_length_control",
    "parse_constraints",
]

CONSTRAINT_TYPES = ("equal_to", "at_most", "at_least")


def check_constraint(constraint: str) -> str:
    """Return the canonical constraint name (``equal_to``, ``at_most`` or ``at_least``).

    LIFEBench's spellings (``"equal to"``, ``"At Most"``, ``"at-least"``) are accepted; anything else raises a
    ``ValueError`` that names the bad value and lists the valid ones.
    """
    if not isinstance(constraint, str):
        raise ValueError(f"constraint must be one of {CONSTRAINT_TYPES}, got {constraint!r}")
    name = constraint.strip().lower().replace(" ", "_").replace("-", "_")
    if name not in CONSTRAINT_TYPES:
        raise ValueError(f"unknown length constraint {constraint!r}; expected one of {', '.join(CONSTRAINT_TYPES)}")
    return name


def _as_float_tensor(x: Tensor | Sequence[float] | float, name: str) -> Tensor:
    tensor = torch.as_tensor(x)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got {tensor.tolist()}")
    return tensor


def length_deviation(lengths: Tensor | Sequence[float] | float, targets: Tensor | Sequence[float] | float) -> Tensor:
    """Relative length deviation ``LD = (L - T) / T`` (a fraction; multiply by 100 for LIFEBench's percent).

    ``lengths`` ``(N,)`` (or a scalar) and ``targets`` broadcastable to it; targets must be positive and lengths
    non-negative. Returns a float tensor of the broadcast shape.
    """
    lengths_t = _as_float_tensor(lengths, "lengths")
    targets_t = _as_float_tensor(targets, "targets").to(lengths_t.dtype)
    if bool((targets_t <= 0).any()):
        raise ValueError(f"length targets must be positive, got {targets_t.tolist()}")
    if bool((lengths_t < 0).any()):
        raise ValueError(f"lengths must be non-negative, got {lengths_t.tolist()}")
    return (lengths_t - targets_t) / targets_t


def length_score(
    lengths: Tensor | Sequence[float] | float,
    targets: Tensor | Sequence[float] | float,
    constraint: str,
    k1: float = 5.0,
    k2: float = 2.0,
) -> Tensor:
    """LIFEBench length score in [0, 100] (module docstring for the equations).

    Args:
        lengths: ``(N,)`` output lengths (or a scalar).
        targets: the constraint lengths ``T``, broadcastable to ``lengths``; positive.
        constraint: ``equal_to``, ``at_most`` or ``at_least``.
        k1: decay rate for outputs shorter than ``T`` (LIFEBench: 5).
        k2: decay rate for outputs longer than ``T`` (LIFEBench: 2).

    Returns:
        Float tensor of the broadcast shape; 100 means the constraint is met exactly (or, for the inequalities, met).
    """
    constraint = check_constraint(constraint)
    if k1 <= 0 or k2 <= 0:
        raise ValueError(f"k1 and k2 must be positive, got k1={k1!r}, k2={k2!r}")
    deviation = length_deviation(lengths, targets)
    asymmetric = torch.where(deviation < 0, 100.0 * torch.exp(k1 * deviation), 100.0 * torch.exp(-k2 * deviation))
    if constraint == "at_most":
        return torch.where(deviation <= 0, torch.full_like(asymmetric, 100.0), asymmetric)
    if constraint == "at_least":
        return torch.where(deviation >= 0, torch.full_like(asymmetric, 100.0), asymmetric)
    return asymmetric


def summarize_length_control(
    lengths: Tensor | Sequence[float],
    targets: Tensor | Sequence[float] | float,
    constraint: str,
    k1: float = 5.0,
    k2: float = 2.0,
) -> dict[str, float]:
    """Aggregate metrics over a set of outputs for one constraint type, as LIFEBench reports them.

    Returns a dict with ``n``, ``mean_length``, ``mean_abs_deviation_pct`` (mean ``|LD|`` in percent, LIFEBench's
    "length deviation"), ``mean_deviation_pct`` (signed: negative means too short), ``mean_score`` (mean length
    score) and ``satisfied`` (fraction of outputs meeting the constraint exactly: ``L = T``, ``L ≤ T`` or ``L ≥ T``).
    """
    constraint = check_constraint(constraint)
    lengths_t = _as_float_tensor(lengths, "lengths").flatten()
    if lengths_t.numel() == 0:
        raise ValueError("summarize_length_control needs at least one output length, got none")
    targets_t = torch.broadcast_to(_as_float_tensor(targets, "targets").to(lengths_t.dtype).flatten(), lengths_t.shape)
    deviation = length_deviation(lengths_t, targets_t)
    scores = length_score(lengths_t, targets_t, constraint, k1=k1, k2=k2)
    if constraint == "equal_to":
        satisfied = lengths_t == targets_t
    elif constraint == "at_most":
        satisfied = lengths_t <= targets_t
    else:
        satisfied = lengths_t >= targets_t
    return {
        "n": int(lengths_t.numel()),
        "mean_length": float(lengths_t.mean()),
        "mean_abs_deviation_pct": float(deviation.abs().mean() * 100.0),
        "mean_deviation_pct": float(deviation.mean() * 100.0),
        "mean_score": float(scores.mean()),
        "satisfied": float(satisfied.to(torch.float64).mean()),
    }


def parse_constraints(spec: str) -> list[tuple[str, int]]:
    """Parse ``"equal_to:16,at_most:32"`` into ``[("equal_to", 16), ("at_most", 32)]`` (names checked, T ≥ 1)."""
    constraints = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition(":")
        if not sep:
            raise ValueError(f"constraint {item!r} must look like NAME:T with NAME in {', '.join(CONSTRAINT_TYPES)}")
        try:
            length = int(value)
        except ValueError:
            raise ValueError(f"constraint {item!r}: T must be an integer number of tokens") from None
        if length < 1:
            raise ValueError(f"constraint {item!r}: T must be ≥ 1 token (EOS counts)")
        constraints.append((check_constraint(name), length))
    if not constraints:
        raise ValueError("no length constraints given")
    return constraints
