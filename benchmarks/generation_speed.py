"""Generation speed of SmolLM2-135M on this machine: tokens per second of ``generate`` (sampling, KV cache) at
several batch sizes, the number the SmolLM2 recipes are sized from.

With ``--model DIR`` it times that model (e.g. ``runs/smollm2-135m-instruct`` after ``lenvm-rl import-gguf``);
without, a random-init model of SmolLM2-135M's shape built in code (same cost per token). Every row generates exactly
``--new-tokens`` tokens (EOS suppressed), so the timing does not depend on when a completion would stop. Last line:
``ratio: <tokens/s at the fastest batch size ÷ tokens/s at batch size 1>``.

    OMP_NUM_THREADS=1 python benchmarks/generation_speed.py [--model runs/smollm2-135m-instruct] [--threads 1]
"""

import argparse
import time

import torch
from _shapes import smollm2_135m_config
from transformers import AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: random init, SmolLM2-135M shape)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: do not oversubscribe shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    else:
        model = AutoModelForCausalLM.from_config(smollm2_135m_config()).eval()
    vocab = model.config.vocab_size
    speeds = {}
    print(f"model: {args.model or 'SmolLM2-135M shape, random init'}; {args.threads} thread(s); prompt "
          f"{args.prompt_len} tokens, {args.new_tokens} new tokens per row, sampling with KV cache")
    for batch in args.batch_sizes:
        ids = torch.randint(10, vocab, (batch, args.prompt_len))
        with torch.inference_mode():
            model.generate(input_ids=ids[:, :8], attention_mask=torch.ones_like(ids[:, :8]), max_new_tokens=2,
                           do_sample=True, pad_token_id=0)  # warm-up
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=True, pad_token_id=0,
                           suppress_tokens=[model.config.eos_token_id] if model.config.eos_token_id else None)
            seconds = time.perf_counter() - start
        speeds[batch] = batch * args.new_tokens / seconds
        print(f"batch {batch:>3}: {speeds[batch]:7.1f} tokens/s  ({seconds / args.new_tokens * 1e3:6.1f} ms per step)")
    best = max(speeds, key=speeds.get)
    print(f"fastest: batch {best}, {speeds[best]:.1f} tokens/s")
    print(f"ratio: {speeds[best] / speeds[min(speeds)]:.3f}")


if __name__ == "__main__":
    main()
