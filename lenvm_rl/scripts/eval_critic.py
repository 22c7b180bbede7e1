"""``lenvm-rl eval-critic``: evaluate a LenVM critic on held-out rollouts — prompt-boundary MRE against a constant
baseline, per-position errors, calibration plots (the metrics of :mod:`lenvm_rl.evaluation`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import check_local_path, check_same_tokenizer, resolve_device
from ..evaluation import critic_metrics, plot_calibration, plot_error_by_position
from ..io import write_text_atomically
from ..length_math import length_to_value
from ..modeling import LengthValueModel, check_tokenizer
from ..rollout import load_rollouts
from ..trainer.critic import prepare_critic_dataset

__all__ = ["EvalCriticArguments", "evaluate_critic", "main"]


@dataclass
class EvalCriticArguments:
    """Evaluate a LenVM critic on held-out rollouts: MRE vs a constant baseline, per-position errors, plots."""

    critic: str = field(metadata={"help": "Directory of a saved LenVM critic (with its tokenizer)."})
    rollouts: str = field(metadata={"help": "Rollout directory written by `lenvm-rl rollout`."})
    output_dir: str = field(metadata={"help": "Where to write metrics.json, calibration.png, error_by_position.png."})
    split: str = field(default="eval", metadata={"help": "Rollout split to evaluate on (held-out prompts)."})
    baseline_split: str = field(
        default="train", metadata={"help": "Split whose mean value is the constant baseline's prediction."}
    )
    batch_size: int = field(default=8, metadata={"help": "Rollouts per critic forward."})
    dtype: str = field(default="float32", metadata={"help": "Critic backbone dtype."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})


DATACLASSES = (EvalCriticArguments,)


def evaluate_critic(args: EvalCriticArguments) -> dict[str, float]:
    """The ``eval-critic`` job. Returns the scalar metrics (also written to ``metrics.json``)."""
    from transformers import AutoTokenizer

    check_local_path(args.critic, "critic")
    splits, info = load_rollouts(args.rollouts)
    for name in (args.split, args.baseline_split):
        if name not in splits:
            raise ValueError(f"{args.rollouts}: no split {name!r}; have {sorted(splits)}")
    critic_path = Path(args.critic)
    if not critic_path.is_dir():
        raise FileNotFoundError(f"critic directory {critic_path} does not exist")
    tokenizer = check_tokenizer(AutoTokenizer.from_pretrained(args.critic))
    check_same_tokenizer(info["tokenizer_fingerprint"], tokenizer, f"rollouts {args.rollouts} vs critic {args.critic}")
    device = resolve_device(args.device)
    critic = LengthValueModel.from_pretrained(args.critic, dtype=getattr(torch, args.dtype)).to(device).eval()
    gamma = critic.gamma
    evaluated = prepare_critic_dataset(splits[args.split], "drop", name=args.split)
    baseline_rows = prepare_critic_dataset(splits[args.baseline_split], "drop", name=args.baseline_split)
    baseline = float(length_to_value(torch.tensor(baseline_rows["completion_length"], dtype=torch.float64),
                                     gamma).mean())
    evaluation = critic_metrics(critic, evaluated, gamma, tokenizer.pad_token_id, baseline_value=baseline,
                                batch_size=args.batch_size, progress=True)
    metrics = {"gamma": gamma, "split": args.split, **evaluation.scalars()}
    output_dir = Path(args.output_dir)
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    plot_calibration(evaluation, output_dir / "calibration.png", constant_prediction=evaluation.constant_prediction)
    plot_error_by_position(evaluation, output_dir / "error_by_position.png")
    return metrics


def main(args: EvalCriticArguments) -> None:
    metrics = evaluate_critic(args)
    print(f"critic {args.critic} on {args.rollouts} [{args.split}]:")
    for key in ("prompt_mre", "constant_mre", "mre_vs_constant", "prompt_mre_naive", "constant_mre_naive",
                "rel_err_at_0pct", "rel_err_at_25pct", "rel_err_at_50pct", "rel_err_at_75pct", "value_mse"):
        print(f"  {key:20s} {metrics[key]:.4f}")
    print(f"metrics.json, calibration.png and error_by_position.png written to {args.output_dir}")
