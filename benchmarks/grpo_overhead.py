"""GRPO step time with a LenVM critic vs without, on the same batch sizes and the same tiny policy.

Critics: one the same size as the policy and one about a quarter of its size. Each configuration runs
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
from lenvm_rl.tiny import save_tiny_causal_lm  # noqa: E402


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    work = tempfile.mkdtemp()
    policy = save_tiny_causal_lm(f"{work}/policy", hidden_size=args.hidden_size, num_layers=args.layers)
    quarter = save_tiny_causal_lm(f"{work}/quarter", hidden_size=args.hidden_size // 2, num_layers=args.layers)
    critics = {}
    for name, backbone in (("same-size", policy), ("quarter-size", quarter)):
        LengthValueModel.from_backbone(backbone, gamma=0.97).save_pretrained(f"{work}/critic-{name}")
        AutoTokenizer.from_pretrained(backbone).save_pretrained(f"{work}/critic-{name}")
        critics[name] = f"{work}/critic-{name}"
    prompts = Dataset.from_list([{"prompt": f"add {i % 9 + 1} {i % 7 + 1} {i % 5 + 1}"} for i in range(256)])

    def run(critic_path: str | None) -> float:
        config = LenVMGRPOConfig(
            output_dir=f"{work}/out", per_device_train_batch_size=16, num_generations=4, max_completion_length=64,
            # learning rate 0: the policy stays fixed, so every configuration generates the same completions and
            # the timing difference is the critic alone (a length term would otherwise shorten generations).
            max_steps=args.steps, learning_rate=0.0, use_cpu=True, bf16=False, report_to="none", logging_steps=1000,
            beta=0.0, seed=0, save_strategy="no", disable_tqdm=True, length_gate="none",
            length_mode="advantage" if critic_path else "none", critic_model_name_or_path=critic_path,
            temperature=1.0,
        )
        trainer = LenVMGRPOTrainer(model=str(policy), reward_funcs=constant_reward, args=config,
                                   train_dataset=prompts)
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / args.steps

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
    for name, seconds in best.items():
        print(f"step time {name:>13}: {seconds * 1e3:8.1f} ms")
    for name in critics:
        print(f"ratio: {best[name] / best['without']:.3f}")


if __name__ == "__main__":
    main()
