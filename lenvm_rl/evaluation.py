"""Critic evaluation: prompt-boundary length prediction error, per-position errors, calibration plots.

Prompt-boundary MRE follows the paper (docs/method.md). With ``N`` samples of one prompt, the ground truth lives in
value space, ``L_GT = ln(mean_i γ^{L_i}) / ln γ`` (= ``ln(1 - mean_i (1 - γ^{L_i})) / ln γ``), the critic predicts
``L̂ = ln(1 + V(s_0)) / ln γ``, and ``MRE = mean_prompts |L̂ - L_GT| / L_GT``. Inverting a mean value
under-estimates the mean raw length (Jensen), so the "naive" MRE against the mean raw length is reported beside
it, not instead of it. The **constant baseline** predicts the training-set mean value for every prompt.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from .data import pad_prompt_completion_batch
from .length_math import check_gamma, length_to_value, value_to_length
from .modeling import unwrap_critic

__all__ = ["CriticEvaluation", "critic_metrics", "value_space_length", "plot_calibration", "plot_error_by_position",
           "save_figure"]

POSITION_FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def value_space_length(lengths: torch.Tensor, gamma: float) -> torch.Tensor:
    """``ln(mean_i γ^{L_i}) / ln γ`` for ``(N,)`` realized lengths of one prompt: the length whose value is the mean
    value (what a perfect critic's ``V(s_0)`` inverts to)."""
    gamma = check_gamma(gamma)
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    return torch.log(torch.exp(lengths * math.log(gamma)).mean()) / math.log(gamma)


@dataclass
class CriticEvaluation:
    """Everything measured on one rollout split. ``scalars()`` gives the logged metrics."""

    gamma: float
    prompt_predicted: list[float] = field(default_factory=list)
    prompt_truth_value_space: list[float] = field(default_factory=list)
    prompt_truth_mean_raw: list[float] = field(default_factory=list)
    constant_prediction: float | None = None
    position_errors: dict[float, list[float]] = field(default_factory=lambda: defaultdict(list))
    calibration_predicted: list[float] = field(default_factory=list)
    calibration_realized: list[float] = field(default_factory=list)
    value_squared_error: float = 0.0
    value_tokens: int = 0

    @staticmethod
    def _mre(predicted: list[float] | float, truth: list[float]) -> float:
        truth_t = torch.tensor(truth, dtype=torch.float64)
        predicted_t = torch.as_tensor(predicted, dtype=torch.float64).expand_as(truth_t)
        return float(((predicted_t - truth_t).abs() / truth_t.clamp(min=1e-9)).mean())

    def scalars(self) -> dict[str, float]:
        out = {
            "prompt_mre": self._mre(self.prompt_predicted, self.prompt_truth_value_space),
            "prompt_mre_naive": self._mre(self.prompt_predicted, self.prompt_truth_mean_raw),
            "value_mse": self.value_squared_error / max(self.value_tokens, 1),
            "num_prompts": float(len(self.prompt_predicted)),
        }
        if self.constant_prediction is not None:
            out["constant_mre"] = self._mre(self.constant_prediction, self.prompt_truth_value_space)
            out["constant_mre_naive"] = self._mre(self.constant_prediction, self.prompt_truth_mean_raw)
            out["mre_vs_constant"] = out["prompt_mre"] / max(out["constant_mre"], 1e-12)
        for fraction in POSITION_FRACTIONS:
            errors = self.position_errors.get(fraction, [])
            out[f"rel_err_at_{int(fraction * 100)}pct"] = float(sum(errors) / len(errors)) if errors else float("nan")
        return out


@torch.no_grad()
def critic_metrics(
    model: Any,
    dataset: Dataset,
    gamma: float,
    pad_token_id: int,
    baseline_value: float | None = None,
    batch_size: int = 8,
    max_calibration_points: int = 20000,
    progress: bool = False,
) -> CriticEvaluation:
    """Run the critic over terminated rollouts and collect the metrics of the module docstring.

    ``dataset`` rows need ``prompt_ids``, ``completion_ids`` (ending with EOS), ``completion_length`` and
    ``prompt_index``; truncated rows must have been removed. ``baseline_value`` is the constant baseline's value
    (the training-set mean of ``G_0``); ``None`` skips the baseline.
    """
    critic = unwrap_critic(model)
    device = next(critic.parameters()).device
    result = CriticEvaluation(gamma=gamma)
    boundary_values: dict[int, list[float]] = defaultdict(list)
    lengths_by_prompt: dict[int, list[int]] = defaultdict(list)
    generator = torch.Generator().manual_seed(0)
    keep_fraction = 1.0
    total_tokens = sum(len(ids) + 1 for ids in dataset["completion_ids"])
    if total_tokens > max_calibration_points:
        keep_fraction = max_calibration_points / total_tokens
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="evaluating critic", disable=not progress):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset)))).to_list()
        tensors = [t.to(device) for t in pad_prompt_completion_batch(rows, pad_token_id)]
        values = critic.values_for_completions(*tensors).double().cpu()
        for row, record in enumerate(rows):
            length = len(record["completion_ids"])
            row_values = values[row, : length + 1]
            remaining = torch.arange(length, -1, -1, dtype=torch.float64)
            targets = length_to_value(remaining, gamma)
            result.value_squared_error += float(((row_values - targets) ** 2).sum())
            result.value_tokens += length + 1
            predicted_remaining = value_to_length(row_values, gamma)
            for fraction in POSITION_FRACTIONS:
                t = int(math.floor(fraction * length))
                realized = length - t
                result.position_errors[fraction].append(float(abs(predicted_remaining[t] - realized) / realized))
            keep = torch.rand(length + 1, generator=generator) < keep_fraction
            result.calibration_predicted.extend(predicted_remaining[keep].tolist())
            result.calibration_realized.extend(remaining[keep].tolist())
            boundary_values[record["prompt_index"]].append(float(row_values[0]))
            lengths_by_prompt[record["prompt_index"]].append(length)
    for prompt, lengths in lengths_by_prompt.items():
        mean_value = torch.tensor(boundary_values[prompt], dtype=torch.float64).mean()
        result.prompt_predicted.append(float(value_to_length(mean_value, gamma)))
        result.prompt_truth_value_space.append(float(value_space_length(torch.tensor(lengths), gamma)))
        result.prompt_truth_mean_raw.append(float(sum(lengths) / len(lengths)))
    if baseline_value is not None:
        result.constant_prediction = float(value_to_length(torch.tensor(baseline_value, dtype=torch.float64), gamma))
    return result


def plot_calibration(evaluation: CriticEvaluation, path: str | Path, bins: int = 20,
                     constant_prediction: float | None = None) -> None:
    """Predicted vs realized remaining length (PNG): every evaluated token (scatter, binned means), the identity
    line, the critic's prompt-boundary predictions per prompt against the value-space ground truth, and the
    constant baseline's prediction (the same length for every prompt: a horizontal line), with both MREs in the
    legend. ``constant_prediction`` defaults to ``evaluation.constant_prediction`` (from :func:`critic_metrics`
    with a ``baseline_value``); without either, no baseline is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if constant_prediction is None:
        constant_prediction = evaluation.constant_prediction
    scalars = evaluation.scalars() if evaluation.prompt_predicted else {}
    predicted = torch.tensor(evaluation.calibration_predicted)
    realized = torch.tensor(evaluation.calibration_realized)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(realized, predicted, s=3, alpha=0.25, label="tokens")
    top = 0.0
    if len(realized):
        edges = torch.linspace(0, float(realized.max()) + 1e-9, bins + 1)
        centers, means = [], []
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            inside = (realized >= low) & (realized < high)
            if inside.any():
                centers.append(float(realized[inside].mean()))
                means.append(float(predicted[inside].mean()))
        ax.plot(centers, means, "o-", color="C3", label="binned mean")
        top = float(max(realized.max(), predicted.max()))
    if evaluation.prompt_predicted:
        label = "critic at the prompt boundary (per prompt)"
        if "prompt_mre" in scalars:
            label += f", MRE {scalars['prompt_mre']:.3f}"
        ax.scatter(evaluation.prompt_truth_value_space, evaluation.prompt_predicted, s=28, marker="D",
                   facecolors="none", edgecolors="C2", linewidths=1.2, label=label)
        top = max(top, *evaluation.prompt_truth_value_space, *evaluation.prompt_predicted)
    if constant_prediction is not None:
        label = f"constant baseline ({constant_prediction:.1f} tokens for every prompt)"
        if evaluation.prompt_truth_value_space:
            constant_mre = CriticEvaluation._mre(constant_prediction, evaluation.prompt_truth_value_space)
            label += f", MRE {constant_mre:.3f}"
        ax.axhline(constant_prediction, color="C7", linestyle=":", linewidth=1.5, label=label)
        top = max(top, constant_prediction)
    if top > 0:
        ax.plot([0, top], [0, top], "k--", linewidth=1, label="perfect")
    ax.set_xlabel("realized remaining tokens (prompt boundary: value-space ground truth)")
    ax.set_ylabel("predicted remaining tokens")
    ax.set_title(f"LenVM calibration (γ={evaluation.gamma:.4g})")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


def plot_error_by_position(evaluation: CriticEvaluation, path: str | Path) -> None:
    """Mean relative remaining-length error at 0/25/50/75% of each completion (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = evaluation.scalars()
    labels = [f"{int(f * 100)}%" for f in POSITION_FRACTIONS]
    errors = [scalars[f"rel_err_at_{int(f * 100)}pct"] for f in POSITION_FRACTIONS]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(labels, errors, color="C0")
    ax.set_xlabel("position in the completion")
    ax.set_ylabel("mean |predicted - realized| / realized")
    ax.set_title("remaining-length error by position (per sample)")
    # Why these exceed the prompt-level MRE: each sample's realized length is compared with the critic's expectation
    # over samples, so the policy's own length spread counts as error here and averages out in the MRE.
    fig.text(0.01, -0.02, "per sampled completion against an expectation over samples: includes the policy's own "
             "length variance,\nso it is larger than the per-prompt MRE", fontsize=7, ha="left", va="top")
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> None:
    import os
    import tempfile

    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")  # no clipped axis labels
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
