"""Accuracy and completion length of a policy on the held-out arithmetic word problems (the GRPO recipes' check).

Samples ``--num_samples`` completions per problem with the sampling settings of the GRPO recipes, scores them with
``gsm8k_correctness`` (the last number of the completion against the answer, the training reward) and reports the
accuracy and the mean completion length (tokens, EOS counted) with 95% bootstrap intervals over problems. The policy
is a model directory or a LoRA adapter directory written by ``lenvm-rl grpo`` (merged onto its base for sampling).

Expected wall time with OMP_NUM_THREADS=1 on a shared 2-core CPU: about 8 minutes for 128 problems x 2 samples.

    OMP_NUM_THREADS=1 python recipes/smollm2/eval_arithmetic.py --policy runs/smollm2-grpo-lenvm \
        --output docs/real_model/grpo_lenvm_eval.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch


def load_policy(path: str):
    """``(model, tokenizer)`` of a model directory, or of a LoRA adapter directory merged onto its base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lenvm_rl.modeling import check_tokenizer

    directory = Path(path)
    if (directory / "adapter_config.json").exists():
        from peft import PeftModel

        base = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(directory))
        model = model.merge_and_unload()
        tokenizer_path = directory if (directory / "tokenizer.json").exists() else Path(base)
    else:
        model, tokenizer_path = AutoModelForCausalLM.from_pretrained(str(directory)), directory
    return model.eval(), check_tokenizer(AutoTokenizer.from_pretrained(str(tokenizer_path)))


def bootstrap_interval(per_problem: list[float], seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the mean over problems (resampling problems)."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(per_problem, k=len(per_problem))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main() -> None:
    from lenvm_rl.data import load_prompt_dataset, render_prompt
    from lenvm_rl.rollout import sample_completions
    from lenvm_rl.tasks import gsm8k_correctness

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--prompts", default="recipes/smollm2/data/arithmetic_eval.jsonl")
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--max_new_tokens", type=int, default=192)
    parser.add_argument("--prompts_per_batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--suffix", default="", help="text appended to each user message (e.g. ' Answer with only "
                                                      "the number.' to measure what the reasoning is worth)")
    parser.add_argument("--group_column", default=None, help="also report accuracy and length by this column "
                                                             "(e.g. steps for reasoning_eval.jsonl)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    model, tokenizer = load_policy(args.policy)
    table = load_prompt_dataset(args.prompts)
    table = table.select(range(min(args.num_prompts, len(table))))
    def with_suffix(prompt):
        if not args.suffix:
            return prompt
        if isinstance(prompt, str):
            return prompt + args.suffix
        return [*prompt[:-1], {**prompt[-1], "content": prompt[-1]["content"] + args.suffix}]

    prompt_ids = [tokenizer(render_prompt(tokenizer, with_suffix(p))[0], add_special_tokens=False)["input_ids"]
                  for p in table["prompt"]]
    correct, lengths, truncated = [], [], 0
    for first in range(0, len(prompt_ids), args.prompts_per_batch):
        chunk = prompt_ids[first:first + args.prompts_per_batch]
        samples = sample_completions(model, tokenizer, chunk, args.num_samples, args.temperature, args.top_p,
                                     max_new_tokens=args.max_new_tokens, seed=args.seed + first)
        answers = [a for a in table["answer"][first:first + len(chunk)] for _ in range(args.num_samples)]
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in samples]
        rewards = gsm8k_correctness(texts, answers)
        for index in range(len(chunk)):
            rows = range(index * args.num_samples, (index + 1) * args.num_samples)
            correct.append(statistics.fmean(rewards[r] for r in rows))
            lengths.append(statistics.fmean(len(samples[r][0]) for r in rows))
        truncated += sum(not terminated for _, terminated in samples)
    result = {
        "policy": args.policy, "prompts": args.prompts, "num_prompts": len(prompt_ids),
        "num_samples": args.num_samples, "temperature": args.temperature, "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "accuracy": statistics.fmean(correct), "accuracy_ci95": bootstrap_interval(correct),
        "mean_length": statistics.fmean(lengths), "mean_length_ci95": bootstrap_interval(lengths),
        "truncated_fraction": truncated / (len(prompt_ids) * args.num_samples),
        "seconds": round(time.perf_counter() - start, 1), "suffix": args.suffix,
    }
    if args.group_column:
        groups = table[args.group_column]
        result["by_" + args.group_column] = {
            str(level): {"problems": sum(g == level for g in groups),
                         "accuracy": statistics.fmean(c for c, g in zip(correct, groups, strict=True) if g == level),
                         "mean_length": statistics.fmean(n for n, g in zip(lengths, groups, strict=True) if g == level)}
            for level in sorted(set(groups))}
        print(f"by {args.group_column}: {json.dumps(result['by_' + args.group_column])}")
    print(f"{args.policy}: accuracy {result['accuracy']:.3f} (95% CI {result['accuracy_ci95'][0]:.3f}–"
          f"{result['accuracy_ci95'][1]:.3f}), mean length {result['mean_length']:.1f} tokens "
          f"({result['mean_length_ci95'][0]:.1f}–{result['mean_length_ci95'][1]:.1f}), truncated "
          f"{100 * result['truncated_fraction']:.1f}%, {len(prompt_ids)} problems x {args.num_samples} samples, "
          f"{result['seconds']:.0f} s")
    if args.output:
        from lenvm_rl.io import write_text_atomically

        write_text_atomically(args.output, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
