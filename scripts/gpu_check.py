"""Helper of ``scripts/gpu_check.sh``: a few GRPO + LenVM steps on a small real-architecture model under ZeRO-3.

Three phases, each its own process so that every training run starts from a fresh DeepSpeed state:

    python scripts/gpu_check.py --prepare --output-dir DIR     # build policy + critic from configs (no download)
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 \\
        scripts/gpu_check.py --run advantage --output-dir DIR  # (and --run none): time the steps, record memory
    python scripts/gpu_check.py --summary --output-dir DIR     # print step times, peak memory, overhead ratio

The policy is a randomly initialised Qwen2-architecture decoder (default ~100M parameters) with the built-in tiny
character-level tokenizer; the critic is a LenVM critic on the same backbone (the worst case for overhead: real
critics are usually smaller than the policy). Random weights rarely emit EOS, so completions run to
``--max-completion-length`` and every step does the same amount of work, which is what a timing check wants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "recipes" / "data" / "tiny_prompts.jsonl"
MODES = ("none", "advantage")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    phase = parser.add_mutually_exclusive_group(required=True)
    phase.add_argument("--prepare", action="store_true", help="Build and save the policy and the critic.")
    phase.add_argument("--run", choices=MODES, help="Train with this length_mode ('none': no critic at all).")
    phase.add_argument("--summary", action="store_true", help="Print the comparison of the two runs.")
    parser.add_argument("--output-dir", default="runs/gpu-check", help="Where models and measurements go.")
    parser.add_argument("--hidden-size", type=int, default=768, help="Policy hidden size.")
    parser.add_argument("--layers", type=int, default=12, help="Policy decoder layers.")
    parser.add_argument("--heads", type=int, default=12, help="Attention heads.")
    parser.add_argument("--kv-heads", type=int, default=2, help="Key/value heads (grouped-query attention).")
    parser.add_argument("--intermediate-size", type=int, default=3072, help="MLP width.")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per run.")
    parser.add_argument("--warmup-steps", type=int, default=2, help="First steps left out of the step time.")
    parser.add_argument("--batch-size", type=int, default=16, help="per_device_train_batch_size (completions).")
    parser.add_argument("--num-generations", type=int, default=8, help="Completions per prompt.")
    parser.add_argument("--max-completion-length", type=int, default=256, help="Tokens per completion at most.")
    parser.add_argument("--no-bf16", action="store_true", help="Train in float32 (only for a CPU smoke run).")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> None:
    """Save a random Qwen2-architecture policy with the tiny tokenizer, and a LenVM critic on that backbone."""
    import torch
    from transformers import AutoModelForCausalLM

    from lenvm_rl import LengthValueModel
    from lenvm_rl.tiny import build_tiny_tokenizer, tiny_decoder_config

    out = Path(args.output_dir)
    tokenizer = build_tiny_tokenizer()
    config = tiny_decoder_config("qwen2", hidden_size=args.hidden_size, num_layers=args.layers,
                                 num_heads=args.heads, max_positions=4096)
    config.num_key_value_heads = args.kv_heads
    config.intermediate_size = args.intermediate_size
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    policy.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    critic = LengthValueModel.from_backbone(out / "policy", gamma=0.99)
    critic.save_pretrained(out / "critic")
    tokenizer.save_pretrained(out / "critic")
    sizes = {"policy_parameters": sum(p.numel() for p in policy.parameters()),
             "critic_parameters": sum(p.numel() for p in critic.parameters())}
    (out / "sizes.json").write_text(json.dumps(sizes))
    print(f"policy: {sizes['policy_parameters'] / 1e6:.1f}M parameters (qwen2, hidden {args.hidden_size}, "
          f"{args.layers} layers); critic: {sizes['critic_parameters'] / 1e6:.1f}M parameters")


def run(args: argparse.Namespace) -> None:
    """A few GRPO steps with ``length_mode=args.run``; records per-step wall time and peak GPU memory."""
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback

    from lenvm_rl import LenVMGRPOConfig, LenVMGRPOTrainer
    from lenvm_rl.tasks import arithmetic_correctness

    out = Path(args.output_dir)

    class StepTimer(TrainerCallback):
        """Wall time between consecutive optimizer-step ends: everything a step costs (generation, scoring, the
        critic, backward, update), wherever the Trainer happens to run it relative to its step callbacks."""

        def __init__(self) -> None:
            self.durations: list[float] = []
            self._last = 0.0

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, *unused, **kwargs) -> None:
            self._last = self._now()

        def on_step_end(self, *unused, **kwargs) -> None:
            now = self._now()
            self.durations.append(now - self._last)
            self._last = now

    bf16 = not args.no_bf16
    config = LenVMGRPOConfig(
        output_dir=str(out / f"run-{args.run}"), length_mode=args.run,
        critic_model_name_or_path=str(out / "critic") if args.run != "none" else None,
        length_coef=0.5, length_gate="none", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, learning_rate=1e-6, beta=0.0, bf16=bf16,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"}, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, use_vllm=False,
    )
    if not config.deepspeed_plugin and not os.environ.get("ACCELERATE_USE_DEEPSPEED"):
        sys.exit("run this phase under `accelerate launch --config_file recipes/accelerate/zero3.yaml` "
                 "(gpu_check.sh does)")
    dataset = load_dataset("json", data_files=str(PROMPTS), split="train")
    timer = StepTimer()
    trainer = LenVMGRPOTrainer(model=str(out / "policy"), reward_funcs=arithmetic_correctness, args=config,
                               train_dataset=dataset, callbacks=[timer])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = timer.durations[args.warmup_steps:] or timer.durations
    result = {
        "mode": args.run,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
        "step_times": timer.durations,
        "step_time": statistics.median(measured),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "mean_completion_length": next((e["completions/mean_length"] for e in reversed(trainer.state.log_history)
                                        if "completions/mean_length" in e), None),
    }
    (out / f"{args.run}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def summary(args: argparse.Namespace) -> None:
    """Print both runs and the critic overhead ratio (step time with critic ÷ without)."""
    out = Path(args.output_dir)
    sizes = json.loads((out / "sizes.json").read_text())
    runs = {mode: json.loads((out / f"{mode}.json").read_text()) for mode in MODES}
    print(f"device: {runs['advantage']['device']}; DeepSpeed ZeRO-{runs['advantage']['zero_stage']}, one process")
    print(f"policy {sizes['policy_parameters'] / 1e6:.1f}M parameters, critic {sizes['critic_parameters'] / 1e6:.1f}M")
    for mode, label in (("none", "without critic (length_mode none)"), ("advantage", "with critic (advantage)")):
        result = runs[mode]
        memory = "n/a" if result["peak_memory_gb"] is None else f"{result['peak_memory_gb']:.2f} GB"
        print(f"{label:36s} step time {result['step_time']:.3f} s   peak memory {memory}   "
              f"mean completion {result['mean_completion_length']}")
    ratio = runs["advantage"]["step_time"] / runs["none"]["step_time"]
    print(f"critic overhead ratio (step time with ÷ without): {ratio:.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.prepare:
        prepare(args)
    elif args.run:
        run(args)
    else:
        summary(args)


if __name__ == "__main__":
    main()
