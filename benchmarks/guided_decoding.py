"""Throughput of value-guided decoding: plain ``generate`` vs guided with cached one-pass scoring vs naive scoring.

All three decode the same left-padded batch for the same number of new tokens (EOS is suppressed with
``min_new_tokens`` so every run produces exactly ``batch × new_tokens`` tokens):

* **plain**: ``policy.generate(do_sample=True, top_k=k)``;
* **cached**: :func:`lenvm_rl.decoding.guided_generate` with ``scoring="cached"`` — one critic forward per step over
  the new token plus the ``k`` candidates, against the critic's KV cache (4-D mask);
* **naive**: the same with ``scoring="naive"`` — the critic re-reads the full prefix for each of the ``k``
  candidates every step (all ``B·k`` rows in one batched forward, the fastest way to do it without a cache).

Runs are interleaved and the median of ``--repeats`` is reported. The critic has the policy's backbone size unless
``--critic-hidden-size``/``--critic-layers`` say otherwise. The last two lines are
``guided/plain ratio: <cached tokens/s ÷ plain tokens/s>`` and ``cached/naive ratio: <cached ÷ naive tokens/s>``.

    python benchmarks/guided_decoding.py [--prompt-len 64] [--new-tokens 64] [--batch 4] [--k 8]
"""

import argparse
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from lenvm_rl import LengthValueModel
from lenvm_rl.decoding import guided_generate
from lenvm_rl.tiny import tiny_decoder_config

EOS, PAD = 1, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="llama")
    parser.add_argument("--vocab-size", type=int, default=32000, help="a realistic vocabulary (Llama-2 size)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--critic-hidden-size", type=int, default=None, help="default: the policy's")
    parser.add_argument("--critic-layers", type=int, default=None, help="default: the policy's")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64, help="prefix tokens before the first new token")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=8, help="candidates scored per step")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = tiny_decoder_config(
        args.architecture, vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_layers=args.layers,
        num_heads=max(4, args.hidden_size // 64),
    )
    policy = AutoModelForCausalLM.from_config(config).eval()
    critic_hidden = args.critic_hidden_size or args.hidden_size
    critic_config = tiny_decoder_config(
        args.architecture, vocab_size=args.vocab_size, hidden_size=critic_hidden,
        num_layers=args.critic_layers or args.layers, num_heads=max(4, critic_hidden // 64),
    )
    with tempfile.TemporaryDirectory() as directory:
        AutoModelForCausalLM.from_config(critic_config).save_pretrained(directory)
        critic = LengthValueModel.from_backbone(directory, gamma=0.997).eval()

    ids = torch.randint(10, args.vocab_size, (args.batch, args.prompt_len))
    mask = torch.ones_like(ids)
    for row in range(1, args.batch):  # left padding, as batched prompts have it
        mask[row, : min(row * 3, args.prompt_len - 1)] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    common = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "pad_token_id": PAD}

    def plain():
        return policy.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, top_k=args.k, eos_token_id=EOS, **common
        )

    def guided(scoring):
        return lambda: guided_generate(
            policy, critic, ids, mask, alpha=args.alpha, top_k=args.k, eos_token_id=EOS, scoring=scoring, **common
        )

    runs = {"plain": plain, "cached": guided("cached"), "naive": guided("naive")}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up (also checks every run emits the expected token count)
            assert fn().shape == (args.batch, args.prompt_len + args.new_tokens)
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.new_tokens
    speed = {name: tokens / statistics.median(values) for name, values in times.items()}
    print(
        f"policy: {args.architecture} hidden={args.hidden_size} layers={args.layers} vocab={args.vocab_size}; "
        f"critic: hidden={critic_hidden} layers={args.critic_layers or args.layers}; threads={torch.get_num_threads()}"
    )
    print(
        f"batch {args.batch} x prompt {args.prompt_len} (left-padded) + {args.new_tokens} new tokens, k={args.k}, "
        f"{args.repeats} repeats (median)"
    )
    for name, label in [("plain", "plain generate"), ("cached", "guided, cached"), ("naive", "guided, naive")]:
        print(f"{label + ':':<16} {speed[name]:10.1f} tokens/s  ({statistics.median(times[name]) * 1e3:8.1f} ms)")
    print(f"guided/plain ratio: {speed['cached'] / speed['plain']:.3f}")
    print(f"cached/naive ratio: {speed['cached'] / speed['naive']:.3f}")


if __name__ == "__main__":
    main()
