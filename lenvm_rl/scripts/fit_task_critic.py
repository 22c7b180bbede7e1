"""``lenvm-rl fit-task-critic``: a frozen task critic for ``task_credit: critic`` (and ``length_charge: settled``),
fitted to a policy's rollouts and evaluated on held-out ones.

    lenvm-rl fit-task-critic --policy P --rollouts C/rollouts --dataset D --output_dir T [--max_steps 1500]

The rollouts are the ones ``lenvm-rl fit-critic`` (or ``rollout``) wrote for the LenVM critic; ``--dataset`` is the
prompt dataset they came from (its other columns, e.g. ``answer``, reach the reward functions as TRL passes them).
Each terminated rollout is scored with the reward functions (summed) and the policy's backbone with a new head is
regressed on that reward at every position (:func:`lenvm_rl.trainer.ppo.pretrain_task_critic`). ``T/metrics.json``
holds the held-out token-level squared error against a constant (the mean training reward): a task critic no better
than the constant gives no per-token task credit worth having (``mse_vs_constant`` near 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FitTaskCriticArguments", "fit_task_critic", "score_rollouts", "main"]


@dataclass
class FitTaskCriticArguments:
    """Rollouts of a policy, scored by the task's reward functions → a frozen task critic, evaluated held out."""

    policy: str = field(metadata={"help": "Policy the rollouts came from (its backbone starts the critic)."})
    rollouts: str = field(metadata={"help": "Rollout directory (lenvm-rl rollout / fit-critic's rollouts/)."})
    dataset: str = field(metadata={"help": "The prompt dataset the rollouts were sampled from (prompt_index rows)."})
    output_dir: str = field(metadata={"help": "Where the task critic, its tokenizer and metrics.json go."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["lenvm_rl.tasks:checked_parity_correctness"],
        metadata={"help": "Reward functions (import paths module:function or built-in names), summed."},
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompt dataset the rollouts used."})
    max_steps: int = field(default=1500, metadata={"help": "AdamW steps (batches drawn with replacement)."})
    batch_size: int = field(default=32, metadata={"help": "Rollouts per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate (1e-3 suits tiny models)."})
    seed: int = field(default=0, metadata={"help": "Seed of the head and the batches."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})


DATACLASSES = (FitTaskCriticArguments,)


def score_rollouts(rows: Sequence[dict[str, Any]], prompts: Sequence[dict[str, Any]], tokenizer: Any,
                   reward_funcs: Sequence[Callable[..., Any]], prompt_column: str = "prompt") -> list[float]:
    """The summed task reward of each rollout row, calling the reward functions as TRL does (decoded completions,
    the prompt, ``completion_ids`` and every other column of the row's prompt as keyword lists)."""
    if not rows:
        return []
    for row in rows:
        if not 0 <= int(row["prompt_index"]) < len(prompts):
            raise ValueError(f"a rollout has prompt_index {row['prompt_index']} but the dataset holds {len(prompts)} "
                             "prompts: --dataset (and --dataset_split) must be the prompts the rollouts came from")
    texts = [tokenizer.decode(row["completion_ids"], skip_special_tokens=True) for row in rows]
    source = [prompts[int(row["prompt_index"])] for row in rows]
    columns = {key: [p[key] for p in source] for key in source[0] if key != prompt_column}
    total = [0.0] * len(rows)
    for func in reward_funcs:
        scores = func(prompts=[p[prompt_column] for p in source], completions=texts,
                      completion_ids=[row["completion_ids"] for row in rows], **columns)
        total = [t + float(s or 0.0) for t, s in zip(total, scores, strict=True)]
    return total


def _held_out_error(critic: Any, rows: Sequence[dict[str, Any]], rewards: Sequence[float], constant: float,
                    pad_token_id: int, device: Any) -> dict[str, float]:
    """Token-level squared error of the critic and of ``constant`` against each terminated row's reward."""
    import torch

    from ..data import pad_prompt_completion_batch

    kept = [(row, r) for row, r in zip(rows, rewards, strict=True) if row["terminated"]]
    critic_error, constant_error, tokens = 0.0, 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(kept), 64):
            chunk = kept[start:start + 64]
            prompt_ids, prompt_mask, completion_ids, completion_mask = (
                t.to(device) for t in pad_prompt_completion_batch([row for row, _ in chunk], pad_token_id))
            values = critic.values_for_completions(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                                   read="logits").float()[:, :-1]
            target = torch.tensor([r for _, r in chunk], device=device)[:, None]
            mask = completion_mask.float()
            critic_error += float((((values - target) ** 2) * mask).sum())
            constant_error += float((((constant - target) ** 2) * mask).sum())
            tokens += float(mask.sum())
    tokens = max(tokens, 1.0)
    return {"eval_rollouts": len(kept), "eval_mse": critic_error / tokens, "constant_mse": constant_error / tokens,
            "mse_vs_constant": critic_error / max(constant_error, 1e-12)}


def fit_task_critic(args: FitTaskCriticArguments) -> dict[str, float]:
    """Fit, save and evaluate the task critic; returns (and writes) its metrics."""
    import numpy as np
    from transformers import AutoTokenizer

    from ..data import check_local_path, load_prompt_dataset, resolve_device
    from ..io import write_text_atomically
    from ..modeling import LengthValueModel
    from ..rewards import resolve_reward_functions
    from ..rollout import load_rollouts
    from ..trainer.ppo import pretrain_task_critic

    check_local_path(args.policy, "policy")
    if args.max_steps < 1 or args.batch_size < 1:
        raise ValueError(f"max_steps and batch_size must be ≥ 1, got {args.max_steps} and {args.batch_size}")
    reward_funcs = resolve_reward_functions(args.reward_funcs)
    splits, _ = load_rollouts(args.rollouts)
    if "train" not in splits:
        raise ValueError(f"{args.rollouts} has no 'train' split (splits: {sorted(splits)})")
    prompts = load_prompt_dataset(args.dataset, args.dataset_split, args.prompt_column).to_list()
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    train = splits["train"].to_list()
    rewards = score_rollouts(train, prompts, tokenizer, reward_funcs, args.prompt_column)
    device = resolve_device(args.device)
    critic = LengthValueModel.from_backbone(args.policy).to(device)
    losses = pretrain_task_critic(critic, train, rewards, tokenizer.pad_token_id, steps=args.max_steps,
                                  batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)
    terminated = [r for row, r in zip(train, rewards, strict=True) if row["terminated"]]
    constant = float(np.mean(terminated)) if terminated else 0.0
    metrics: dict[str, float] = {"train_rollouts": len(train), "mean_reward": constant, "first_loss": losses[0],
                                 "last_loss": float(np.mean(losses[-20:]))}
    held_out = splits["eval"].to_list() if "eval" in splits else []
    if held_out:
        metrics.update(_held_out_error(critic, held_out, score_rollouts(held_out, prompts, tokenizer, reward_funcs,
                                                                        args.prompt_column),
                                       constant, tokenizer.pad_token_id, device))
    out = Path(args.output_dir)
    staging = out.with_name(out.name + ".tmp")
    critic.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_text_atomically(staging / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    staging.rename(out)
    return metrics


def main(args: FitTaskCriticArguments) -> None:
    metrics = fit_task_critic(args)
    print(json.dumps(metrics, indent=1))
    if "mse_vs_constant" in metrics and metrics["mse_vs_constant"] > 0.9:
        print(f"warning: the task critic's held-out error is {metrics['mse_vs_constant']:.2f}× a constant's: it "
              "predicts little beyond the mean reward, so its per-token task credit is mostly noise; fit longer or "
              "on more rollouts")
    print(f"wrote {args.output_dir}")
