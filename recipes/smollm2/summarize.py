"""Summaries of the SmolLM2 runs for docs/real_model.md: each prints a table and writes a small JSON (and a plot).

    python recipes/smollm2/summarize.py rollouts --rollouts runs/smollm2-rollouts \
        --output docs/real_model/rollouts.json
    python recipes/smollm2/summarize.py critic-training --runs runs/smollm2-critic-top4 runs/smollm2-critic-lora \
        --output docs/real_model/critic_training.json --plot docs/real_model/critic_mre_vs_cpu.png
    python recipes/smollm2/summarize.py grpo --runs runs/smollm2-grpo-none runs/smollm2-grpo-lenvm \
        --output docs/real_model/grpo_training.json --plot docs/real_model/grpo_length.png

`rollouts` groups the rollouts by prompt category (recipes/smollm2/data/instructions.jsonl) and scores the arithmetic
ones with `gsm8k_correctness`; `critic-training` reads the evaluations logged in each run's last checkpoint
(`trainer_state.json`): prompt-boundary MRE against the CPU seconds spent training so far; `grpo` reads the per-step
completion length and reward logged by TRL.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _write(path: str | None, data: dict) -> None:
    if path:
        from lenvm_rl.io import write_text_atomically

        write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def _log_history(run: str) -> list[dict]:
    """The log history of a run: its final trainer_state.json, else that of its last checkpoint."""
    directory = Path(run)
    candidates = [directory / "trainer_state.json"]
    candidates += sorted(directory.glob("checkpoint-*/trainer_state.json"),
                         key=lambda p: int(p.parent.name.split("-")[1]), reverse=True)
    for path in candidates:
        if path.exists():
            return json.loads(path.read_text())["log_history"]
    raise FileNotFoundError(f"{run}: no trainer_state.json (in it or in a checkpoint-N)")


def rollouts(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from lenvm_rl.rollout import load_rollouts
    from lenvm_rl.tasks import gsm8k_correctness

    splits, info = load_rollouts(args.rollouts)
    prompts = [json.loads(line) for line in Path(info["settings"]["dataset"]).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(info["settings"]["policy"])
    rows = [row for split in splits.values() for row in split]
    table = {}
    for category in dict.fromkeys(p["category"] for p in prompts):
        mine = [r for r in rows if prompts[r["prompt_index"]]["category"] == category]
        ended = [r["completion_length"] for r in mine if r["terminated"]]
        entry = {"prompts": len({r["prompt_index"] for r in mine}), "completions": len(mine),
                 "truncated_fraction": 1 - len(ended) / len(mine),
                 "mean_length_terminated": statistics.fmean(ended) if ended else None,
                 "median_length_terminated": statistics.median(ended) if ended else None}
        if category == "arithmetic":
            texts = [tokenizer.decode(r["completion_ids"], skip_special_tokens=True) for r in mine]
            answers = [prompts[r["prompt_index"]]["answer"] for r in mine]
            entry["accuracy"] = statistics.fmean(gsm8k_correctness(texts, answers))
        table[category] = entry
    ended = [r["completion_length"] for r in rows if r["terminated"]]
    summary = {"rollouts": args.rollouts, "num_rows": len(rows), "splits": info["splits"],
               "terminated_fraction": info["terminated_fraction"], "mean_length_terminated": statistics.fmean(ended),
               "settings": info["settings"], "by_category": table}
    print(f"{'category':<13} {'prompts':>7} {'compl.':>6} {'trunc%':>6} {'mean L':>7} {'median L':>8}  accuracy")
    for category, entry in table.items():
        accuracy = f"{entry['accuracy']:.3f}" if "accuracy" in entry else ""
        print(f"{category:<13} {entry['prompts']:>7} {entry['completions']:>6} "
              f"{100 * entry['truncated_fraction']:>6.1f} {entry['mean_length_terminated']:>7.1f} "
              f"{entry['median_length_terminated']:>8.1f}  {accuracy}")
    print(f"all: {len(rows)} completions, {100 * (1 - info['terminated_fraction']):.1f}% truncated, mean length "
          f"{summary['mean_length_terminated']:.1f} tokens (terminated, EOS counted)")
    _write(args.output, summary)


def critic_training(args: argparse.Namespace) -> None:
    summary = {}
    for run in args.runs:
        history = _log_history(run)
        evals = [{"step": e["step"], "train_cpu_minutes": e["eval_train_cpu_seconds"] / 60,
                  "train_wall_minutes": e["eval_train_seconds"] / 60, "prompt_mre": e["eval_prompt_mre"],
                  "constant_mre": e["eval_constant_mre"], "mre_vs_constant": e["eval_mre_vs_constant"]}
                 for e in history if "eval_prompt_mre" in e and "eval_train_cpu_seconds" in e]
        final = [e for e in history if "train_runtime" in e]
        summary[run] = {"evaluations": evals, "train_runtime_s": final[-1]["train_runtime"] if final else None}
        print(run)
        print(f"  {'step':>5} {'CPU min':>8} {'wall min':>8} {'MRE':>7} {'constant':>8} {'ratio':>6}")
        for e in evals:
            print(f"  {e['step']:>5} {e['train_cpu_minutes']:>8.1f} {e['train_wall_minutes']:>8.1f} "
                  f"{e['prompt_mre']:>7.3f} {e['constant_mre']:>8.3f} {e['mre_vs_constant']:>6.3f}")
    _write(args.output, summary)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5.5, 3.8))
        for run, entry in summary.items():
            points = entry["evaluations"]
            axis.plot([p["train_cpu_minutes"] for p in points], [p["prompt_mre"] for p in points], "o-",
                      label=Path(run).name)
        constant = next(iter(summary.values()))["evaluations"][0]["constant_mre"]
        axis.axhline(constant, color="grey", linestyle="--", label="constant baseline")
        axis.axhline(constant / 2, color="grey", linestyle=":", label="target (0.5x baseline)")
        axis.set_xlabel("CPU minutes of training (evaluation excluded)")
        axis.set_ylabel("prompt-boundary MRE (held-out)")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=110)


def grpo(args: argparse.Namespace) -> None:
    summary = {}
    for run in args.runs:
        history = [e for e in _log_history(run) if "completions/mean_length" in e]
        reward_key = next(k for k in history[0] if k.startswith("rewards/") and k.endswith("/mean"))
        steps = [{"step": e["step"], "mean_length": e["completions/mean_length"], "reward": e[reward_key],
                  "clipped_ratio": e.get("completions/clipped_ratio")} for e in history]
        window = max(1, len(steps) // 5)
        first, last = steps[:window], steps[-window:]
        summary[run] = {"steps": steps, "window": window,
                        "first_mean_length": statistics.fmean(s["mean_length"] for s in first),
                        "last_mean_length": statistics.fmean(s["mean_length"] for s in last),
                        "first_reward": statistics.fmean(s["reward"] for s in first),
                        "last_reward": statistics.fmean(s["reward"] for s in last)}
        entry = summary[run]
        print(f"{run}: {len(steps)} steps; mean length {entry['first_mean_length']:.1f} -> "
              f"{entry['last_mean_length']:.1f} tokens, reward {entry['first_reward']:.3f} -> "
              f"{entry['last_reward']:.3f} (means over the first and last {window} steps)")
    _write(args.output, summary)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for run, entry in summary.items():
            steps = entry["steps"]
            axes[0].plot([s["step"] for s in steps], [s["mean_length"] for s in steps], label=Path(run).name)
            axes[1].plot([s["step"] for s in steps], [s["reward"] for s in steps], label=Path(run).name)
        axes[0].set_ylabel("mean completion length (tokens)")
        axes[1].set_ylabel("accuracy reward (training batch)")
        for axis in axes:
            axis.set_xlabel("GRPO step")
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("rollouts")
    one.add_argument("--rollouts", default="runs/smollm2-rollouts")
    one.add_argument("--output")
    two = commands.add_parser("critic-training")
    two.add_argument("--runs", nargs="+", required=True)
    two.add_argument("--output")
    two.add_argument("--plot")
    three = commands.add_parser("grpo")
    three.add_argument("--runs", nargs="+", required=True)
    three.add_argument("--output")
    three.add_argument("--plot")
    args = parser.parse_args()
    {"rollouts": rollouts, "critic-training": critic_training, "grpo": grpo}[args.command](args)


if __name__ == "__main__":
    main()
