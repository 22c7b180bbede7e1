"""GRPO step time with a LenVM critic vs without, on the same batch sizes and the same tiny policy.

The policy stops like a real one: before timing, the random tiny policy is briefly fine-tuned (a few hundred
supervised steps, seconds) on the built-in arithmetic task's terse and verbose traces followed by EOS, so its
completions end after 3–30 tokens instead of always running to the token limit; the script prints the mean
completion length and the fraction that hit the limit in the timed runs. Critics: one the same size as the policy
and one about a quarter of its size. Each configuration runs
``--steps`` optimizer steps per repeat; repeats alternate between configurations and the fastest repeat counts
(the machine is noisy). The last two lines are ``ratio: <with critic ÷ without>`` for the same-size critic, then
the quarter-size one.

    python benchmarks/grpo_overhead.py [--steps 6] [--repeats 2]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from lenvm_rl import (  # noqa: E402
    LengthValueModel,  # noqa: E402
    LenVMGRPOConfig,
    LenVMGRPOTrainer,
)
from lenvm_rl.tasks import format_prompt, format_trace, make_problems  # noqa: E402
from lenvm_rl.tiny import save_tiny_causal_lm  # noqa: E402


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


def train_to_stop(policy_dir, steps: int, seed: int = 0) -> None:
    """Fine-tune the policy in ``policy_dir`` in place on ``prompt → trace + EOS`` (plain text, as GRPO feeds string
    prompts), half terse and half verbose traces, so that it learns to end its completions."""
    import random

    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir).train()
    rng = random.Random(seed)
    rows = []
    for problem in make_problems(2048, seed=seed):
        prompt = tokenizer(format_prompt(problem), add_special_tokens=False)["input_ids"]
        completion = tokenizer(format_trace(problem, verbose=rng.random() < 0.5), add_special_tokens=False)
        rows.append((prompt, completion["input_ids"] + [tokenizer.eos_token_id]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = rng.sample(rows, 32)
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(batch):
            sequence = prompt + completion
            ids[row, :len(sequence)] = torch.tensor(sequence)
            labels[row, len(prompt):len(sequence)] = torch.tensor(completion)
            mask[row, :len(sequence)] = 1
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.save_pretrained(policy_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sft-steps", type=int, default=300, help="supervised steps that teach the policy to stop")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: do not oversubscribe shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = tempfile.mkdtemp()
    policy = save_tiny_causal_lm(f"{work}/policy", hidden_size=args.hidden_size, num_layers=args.layers)
    train_to_stop(policy, args.sft_steps)
    quarter = save_tiny_causal_lm(f"{work}/quarter", hidden_size=args.hidden_size // 2, num_layers=args.layers)
    critics = {}
    for name, backbone in (("same-size", policy), ("quarter-size", quarter)):
        LengthValueModel.from_backbone(backbone, gamma=0.97).save_pretrained(f"{work}/critic-{name}")
        AutoTokenizer.from_pretrained(backbone).save_pretrained(f"{work}/critic-{name}")
        critics[name] = f"{work}/critic-{name}"
    prompts = Dataset.from_list([{"prompt": f"add {i % 9 + 1} {i % 7 + 1} {i % 5 + 1}"} for i in range(256)])

    lengths: list[float] = []
    clipped: list[float] = []

    def run(critic_path: str | None) -> float:
        config = LenVMGRPOConfig(
            output_dir=f"{work}/out", per_device_train_batch_size=16, num_generations=4, max_completion_length=64,
            # learning rate 0: the policy stays fixed, so every configuration generates the same completions and
            # the timing difference is the critic alone (a length term would otherwise shorten generations).
            max_steps=args.steps, learning_rate=0.0, use_cpu=True, bf16=False, report_to="none", logging_steps=1,
            beta=0.0, seed=0, save_strategy="no", disable_tqdm=True, length_gate="none",
            length_mode="advantage" if critic_path else "none", critic_model_name_or_path=critic_path,
            temperature=1.0,
        )
        trainer = LenVMGRPOTrainer(model=str(policy), reward_funcs=constant_reward, args=config,
                                   train_dataset=prompts)
        start = time.perf_counter()
        trainer.train()
        seconds = (time.perf_counter() - start) / args.steps
        for entry in trainer.state.log_history:
            if "completions/mean_length" in entry:
                lengths.append(entry["completions/mean_length"])
                clipped.append(entry["completions/clipped_ratio"])
        return seconds

    best = {"without": float("inf"), **{name: float("inf") for name in critics}}
    run(None)  # warm-up
    for _ in range(args.repeats):
        best["without"] = min(best["without"], run(None))
        for name, path in critics.items():
            best[name] = min(best[name], run(path))
    policy_params = sum(p.numel() for p in LengthValueModel.from_pretrained(critics["same-size"]).parameters())
    small_params = sum(p.numel() for p in LengthValueModel.from_pretrained(critics["quarter-size"]).parameters())
    print(f"policy/critic: hidden={args.hidden_size} layers={args.layers}; critic params {policy_params:,} "
          f"(same-size) and {small_params:,} (quarter-size)")
    print(f"batch: 16 completions (4 per prompt) x up to 64 tokens, {args.steps} steps x {args.repeats} repeats")
    print(f"completions: mean length {sum(lengths) / len(lengths):.1f} tokens, "
          f"{100 * sum(clipped) / len(clipped):.1f}% hit the 64-token limit (the policy stops on its own)")
    for name, seconds in best.items():
        print(f"step time {name:>13}: {seconds * 1e3:8.1f} ms")
    for name in critics:
        print(f"ratio: {best[name] / best['without']:.3f}")


if __name__ == "__main__":
    main()
