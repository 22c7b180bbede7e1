"""One GRPO step of the real-model study, under TRL's defaults against the study's speed settings, in one run.

A real-model study run is 30 GRPO steps of 4 prompts x 4 completions (SmolLM2-135M-Instruct with LoRA, T 0.7, up to
192 tokens) and evaluations of 128 prompts x 2 samples. Two settings change its speed and not what it computes:

- ``compact_generation`` (``lenvm_rl.sampling.decode_compacted``): ``generate`` computes every row of a batch until
  its longest completion ends, so with completions of mean length L against a limit of 192 about 1 - L/192 of the
  row-steps make padding. The compacted loop drops each row (and its KV cache) when it ends. The same distribution.
- ``gradient_checkpointing``: TRL's GRPOConfig turns it on (GPU memory); it recomputes the forward pass in backward.

Rows (each the best of ``--repeats``, configurations alternating; the machine is noisy):

- ``decoding``: sampling the completions of ``--batch-sizes`` rows (4 x 4 is an RL step, 256 an evaluation) with
  ``generate`` and with the compacted loop, from the same chat-templated arithmetic prompts; tokens/s counts the
  tokens of the completions (EOS included), not the padding;
- ``GRPO step``: ``--steps`` LenVMGRPOTrainer steps (no length term) under TRL's defaults (generate, gradient
  checkpointing) and under the study's recipe (compacted decoding, no checkpointing), seconds per step.

Needs the imported model (``lenvm-rl import-gguf --model smollm2-135m-instruct --output_dir
runs/smollm2-135m-instruct``): a random-init model never ends its completions, which is the case this measures.
Last line: ``ratio: <TRL-default seconds per GRPO step ÷ the study's>``.

    OMP_NUM_THREADS=1 python benchmarks/grpo_step_speed.py --model runs/smollm2-135m-instruct [--threads 1]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from lenvm_rl.rollout import sample_completions  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "recipes" / "smollm2" / "data" / "arithmetic_train.jsonl"


def prompt_ids(tokenizer, count: int) -> list[list[int]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:count]]
    return [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] for row in rows]


def time_decoding(model, tokenizer, prompts: list[list[int]], samples: int, compact: bool, max_new_tokens: int,
                  seed: int) -> tuple[float, int]:
    start = time.perf_counter()
    completions = sample_completions(model, tokenizer, prompts, num_samples=samples, temperature=0.7,
                                     max_new_tokens=max_new_tokens, seed=seed, compact=compact)
    return time.perf_counter() - start, sum(len(ids) for ids, _ in completions)


def time_grpo(model_dir: str, steps: int, study_settings: bool, max_new_tokens: int, seed: int) -> float:
    from datasets import Dataset
    from peft import LoraConfig

    from lenvm_rl import LenVMGRPOConfig, LenVMGRPOTrainer
    from lenvm_rl.rewards import resolve_reward_functions

    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    with tempfile.TemporaryDirectory() as out:
        args = LenVMGRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=16, num_generations=4,
                               max_completion_length=max_new_tokens, temperature=0.7, learning_rate=2e-4, beta=0.0,
                               use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
                               seed=seed, length_mode="none", compact_generation=study_settings,
                               gradient_checkpointing=not study_settings)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        trainer = LenVMGRPOTrainer(model=model_dir, reward_funcs=resolve_reward_functions(["gsm8k_correctness"]),
                                   args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=lora)
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the imported SmolLM2-135M-Instruct directory")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64],
                        help="decoding rows (4 prompts x 4 samples, ...)")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--steps", type=int, default=2, help="GRPO steps per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        parser.error(f"--model {args.model} is not a model directory (lenvm-rl import-gguf makes one)")
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    print(f"model: {args.model}; {args.threads} thread(s); T 0.7, up to {args.max_new_tokens} new tokens")
    for rows in args.batch_sizes:
        prompts = prompt_ids(tokenizer, max(1, rows // 4))
        best = {False: (float("inf"), 0), True: (float("inf"), 0)}
        for repeat in range(args.repeats):
            for compact in (False, True):
                seconds, tokens = time_decoding(model, tokenizer, prompts, 4, compact, args.max_new_tokens, repeat)
                best[compact] = min(best[compact], (seconds, tokens))
        (plain, plain_tokens), (compacted, compacted_tokens) = best[False], best[True]
        print(f"decoding {rows:>3} rows: generate {plain:6.1f} s ({plain_tokens / plain:5.1f} tokens/s), compacted "
              f"{compacted:6.1f} s ({compacted_tokens / compacted:5.1f} tokens/s): "
              f"{(compacted_tokens / compacted) / (plain_tokens / plain):.2f}x the tokens/s")
    del model
    step = {False: float("inf"), True: float("inf")}
    for repeat in range(args.repeats):
        for study_settings in (False, True):
            step[study_settings] = min(step[study_settings],
                                       time_grpo(args.model, args.steps, study_settings, args.max_new_tokens, repeat))
    print(f"GRPO step (16 completions): TRL defaults {step[False]:.1f} s, study settings {step[True]:.1f} s")
    print(f"ratio: {step[False] / step[True]:.3f}")


if __name__ == "__main__":
    main()
