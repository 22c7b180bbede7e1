"""Critic forward vs causal-LM forward on the same backbone, at SmolLM2-135M's real shape.

The critic runs the backbone plus a small H×H head and skips the LM head over the vocabulary. At SmolLM2-135M's
proportions (hidden 576, 30 layers, vocabulary 49,152) the LM head is about a fifth of a causal-LM forward, so the
critic should cost about 0.8 of it; the script also prints the analytic ratio for Qwen2.5-0.5B/1.5B/7B shapes. Both
models are randomly initialized from a config built in code (no download). Both sides are timed in one run,
interleaved, and the median of several repeats is compared. The last line is ``ratio: <critic / causal LM>``.

    python benchmarks/critic_forward.py [--batch 2] [--seq-len 256] [--repeats 7] [--threads 1]
"""

import argparse
import statistics
import tempfile
import time

import torch
from _shapes import SHAPES, analytic_critic_ratio, print_analytic_table, smollm2_135m_config
from transformers import AutoModelForCausalLM

from lenvm_rl import LengthValueModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: do not oversubscribe shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = smollm2_135m_config()
    causal_lm = AutoModelForCausalLM.from_config(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        causal_lm.save_pretrained(directory)
        critic = LengthValueModel.from_backbone(directory, gamma=0.997).eval()

    ids = torch.randint(10, config.vocab_size, (args.batch, args.seq_len))
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
    params = sum(p.numel() for p in causal_lm.parameters())
    print(f"backbone: SmolLM2-135M shape (llama, hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"vocab {config.vocab_size}, {params / 1e6:.1f}M parameters, random init); {args.threads} thread(s)")
    print_analytic_table(args.seq_len)
    expected, _ = analytic_critic_ratio(SHAPES["smollm2-135m"], args.seq_len)
    print(f"batch: {args.batch} x {args.seq_len} tokens, {args.repeats} repeats (median)")
    print(f"critic forward:    {critic_s * 1e3:8.1f} ms  ({tokens / critic_s:,.0f} tokens/s)")
    print(f"causal LM forward: {lm_s * 1e3:8.1f} ms  ({tokens / lm_s:,.0f} tokens/s)")
    print(f"analytic ratio (SmolLM2-135M): {expected:.3f}")
    print(f"ratio: {critic_s / lm_s:.3f}")


if __name__ == "__main__":
    main()
