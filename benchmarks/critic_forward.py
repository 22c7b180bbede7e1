"""Critic forward vs causal-LM forward on the same tiny backbone.

The critic runs the backbone plus a small H×H head and skips the LM head over the vocabulary, so it should cost
less than ``AutoModelForCausalLM`` on the same inputs. Both sides are timed in one run, interleaved, and the median
of several repeats is compared. The last line is ``ratio: <critic / causal LM>``; below 1.0 is the expectation.

    python benchmarks/critic_forward.py [--vocab-size 32000] [--hidden-size 256] [--batch 8] [--seq-len 256]
"""

import argparse
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from lenvm_rl import LengthValueModel
from lenvm_rl.tiny import tiny_decoder_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="qwen2")
    parser.add_argument("--vocab-size", type=int, default=32000, help="a realistic vocabulary (Llama-2 size)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = tiny_decoder_config(
        args.architecture, vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_layers=args.layers
    )
    causal_lm = AutoModelForCausalLM.from_config(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        causal_lm.save_pretrained(directory)
        critic = LengthValueModel.from_backbone(directory, gamma=0.997).eval()

    ids = torch.randint(10, args.vocab_size, (args.batch, args.seq_len))
    mask = torch.ones_like(ids)

    def time_once(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def run_critic():
        critic(input_ids=ids, attention_mask=mask)

    def run_causal_lm():
        causal_lm(input_ids=ids, attention_mask=mask)

    critic_times, lm_times = [], []
    with torch.inference_mode():
        run_critic(), run_causal_lm()  # warm-up
        for _ in range(args.repeats):
            critic_times.append(time_once(run_critic))
            lm_times.append(time_once(run_causal_lm))
    critic_s, lm_s = statistics.median(critic_times), statistics.median(lm_times)
    tokens = args.batch * args.seq_len
    print(f"backbone: {args.architecture} hidden={args.hidden_size} layers={args.layers} vocab={args.vocab_size}")
    print(f"batch: {args.batch} x {args.seq_len} tokens, {args.repeats} repeats (median)")
    print(f"critic forward:    {critic_s * 1e3:8.2f} ms  ({tokens / critic_s:,.0f} tokens/s)")
    print(f"causal LM forward: {lm_s * 1e3:8.2f} ms  ({tokens / lm_s:,.0f} tokens/s)")
    print(f"ratio: {critic_s / lm_s:.3f}")


if __name__ == "__main__":
    main()
