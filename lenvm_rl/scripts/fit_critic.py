"""``lenvm-rl fit-critic``: one command from a policy and prompts to an evaluated LenVM critic of that policy.

    lenvm-rl fit-critic --policy P --dataset D --output_dir C [--num_samples 8 --max_new_tokens 512 --max_steps 600]

Three stages, each the job it names, each skipped when its output already exists (a stopped run resumes where it
stopped; rollouts resume chunk by chunk):

1. ``C/rollouts``: ``num_samples`` completions per prompt from the policy, prompts split train/held-out
   (``lenvm-rl rollout``);
2. ``C/critic``: the critic on the policy's backbone, γ chosen automatically from the lengths (``train-critic``);
3. ``C/eval``: prompt-boundary MRE on the held-out prompts against a constant prediction, calibration plots
   (``eval-critic``).

Between 1 and 2 it prints sizing advice from the rollouts: supervised tokens, how many passes ``max_steps`` makes over
them, the truncation rate (raise ``max_new_tokens`` when it is high: truncated rollouts carry no length label), and
the γ the lengths imply.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FitCriticArguments", "fit_critic", "main"]


@dataclass
class FitCriticArguments:
    """Rollouts of a policy → a LenVM critic (γ auto) → its evaluation against a constant baseline, in one job."""

    policy: str = field(metadata={"help": "Policy whose lengths the critic learns: local directory or hub name."})
    dataset: str = field(metadata={"help": "Prompts: json/jsonl/parquet/csv file, save_to_disk directory or hub name."})
    output_dir: str = field(metadata={"help": "Holds rollouts/, critic/ (the result) and eval/."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompt dataset to read."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts (None: all)."})
    num_samples: int = field(default=8, metadata={"help": "Completions per prompt."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts (the policy's "
                                                                "RL temperature)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top_p of the rollouts (the RL top_p)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token limit of a rollout (the RL limit)."})
    eval_fraction: float = field(default=0.25, metadata={"help": "Fraction of prompts held out for evaluation."})
    prompts_per_batch: int = field(default=16, metadata={"help": "Prompts per generate call."})
    max_steps: int = field(default=600, metadata={"help": "Critic optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Rollouts per critic optimizer step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Critic learning rate (2e-3 suits tiny models)."})
    trainable_top_layers: int | None = field(
        default=None, metadata={"help": "Train only the head and the top N backbone layers (None: everything)."})
    seed: int = field(default=0, metadata={"help": "Seed of the rollouts, the split and the critic's head."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})


DATACLASSES = (FitCriticArguments,)


def sizing_advice(rows: Any, max_steps: int, batch_size: int, max_new_tokens: int) -> list[str]:
    """Lines of advice from rollout rows (``completion_length``, ``terminated``): tokens, passes, truncation, γ."""
    from ..length_math import choose_gamma

    lengths = [int(n) for n in rows["completion_length"]]
    terminated = [bool(t) for t in rows["terminated"]]
    done = [n for n, t in zip(lengths, terminated, strict=True) if t]
    truncated = 1.0 - len(done) / max(len(lengths), 1)
    passes = max_steps * batch_size / max(len(done), 1)
    lines = [f"rollouts: {len(lengths)} completions, {sum(lengths):,} tokens, mean length "
             f"{sum(lengths) / max(len(lengths), 1):.1f}, {100 * truncated:.1f}% truncated at {max_new_tokens}",
             f"critic training: {max_steps} steps × {batch_size} rollouts = {passes:.1f} passes over the "
             f"{len(done)} terminated training rollouts"]
    if done:
        lines.append(f"γ auto from these lengths: {choose_gamma(done):.4f} (their 99th percentile maps to value -0.99)")
    if truncated > 0.05:
        lines.append(f"advice: {100 * truncated:.0f}% of rollouts hit max_new_tokens and carry no length label; raise "
                     "max_new_tokens to the RL run's limit or beyond")
    if passes > 20:
        lines.append("advice: more than 20 passes over the data; the critic may memorize it (more prompts, or fewer "
                     "max_steps)")
    if passes < 1:
        lines.append("advice: less than one pass over the data; raise max_steps")
    return lines


def fit_critic(args: FitCriticArguments, training_overrides: dict[str, Any] | None = None,
               eval_dir: str = "eval") -> tuple[str, dict]:
    """Run the three stages (each skipped when done) and return ``(critic directory, evaluation metrics)``.
    ``training_overrides`` are extra :class:`~lenvm_rl.trainer.critic.LenVMConfig` fields (the study sets its own
    logging); ``eval_dir`` names the evaluation folder under ``output_dir``."""
    from trl import ModelConfig

    from ..data import check_local_path
    from ..rollout import RolloutConfig, generate_rollouts
    from ..trainer.critic import LenVMConfig
    from .eval_critic import EvalCriticArguments, evaluate_critic
    from .train_critic import CriticScriptArguments, train_critic

    if args.num_samples < 2:
        raise ValueError(f"num_samples must be ≥ 2 (the evaluation compares a prompt's samples), got "
                         f"{args.num_samples}")
    if not 0.0 < args.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in (0, 1): the critic is judged on held-out prompts, got "
                         f"{args.eval_fraction}")
    if args.max_steps < 1 or args.batch_size < 1:
        raise ValueError("max_steps and batch_size must be ≥ 1")
    check_local_path(args.policy, "policy")
    out = Path(args.output_dir)
    rollouts, critic, evaluation = out / "rollouts", out / "critic", out / eval_dir
    splits = generate_rollouts(RolloutConfig(
        policy=args.policy, dataset=args.dataset, output_dir=str(rollouts), prompt_column=args.prompt_column,
        dataset_split=args.dataset_split, max_prompts=args.max_prompts, num_samples=args.num_samples,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        eval_fraction=args.eval_fraction,
        seed=args.seed, prompts_per_batch=args.prompts_per_batch, device=args.device))
    for line in sizing_advice(splits["train"], args.max_steps, args.batch_size, args.max_new_tokens):
        print(line)
    if not (critic / "config.json").exists():
        settings = {"output_dir": str(critic), "max_steps": args.max_steps, "per_device_train_batch_size":
                    args.batch_size, "learning_rate": args.learning_rate, "lr_scheduler_type": "cosine",
                    "warmup_steps": 0.05, "use_cpu": args.device == "cpu", "report_to": "none", "save_strategy": "no",
                    "eval_strategy": "no", "seed": args.seed, "logging_steps": max(1, args.max_steps // 10),
                    "trainable_top_layers": args.trainable_top_layers, **(training_overrides or {})}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # truncated rollouts are dropped and counted in the metrics
            train_critic(CriticScriptArguments(rollouts=str(rollouts)), LenVMConfig(**settings),
                         ModelConfig(model_name_or_path=args.policy))
    metrics_file = evaluation / "metrics.json"
    if metrics_file.exists() and metrics_file.stat().st_mtime >= (critic / "config.json").stat().st_mtime:
        return str(critic), json.loads(metrics_file.read_text())
    metrics = evaluate_critic(EvalCriticArguments(critic=str(critic), rollouts=str(rollouts),
                                                  output_dir=str(evaluation), device=args.device))
    return str(critic), metrics


def main(args: FitCriticArguments) -> None:
    critic, metrics = fit_critic(args)
    print(f"critic: {critic} (γ = {metrics['gamma']:.4f})")
    print(f"held-out prompt-boundary MRE {metrics['prompt_mre']:.3f} vs {metrics['constant_mre']:.3f} for a constant "
          f"prediction (ratio {metrics['mre_vs_constant']:.2f}; below 1: the critic knows something the mean does not)")
    print(f"plots: {Path(args.output_dir) / 'eval'}")
