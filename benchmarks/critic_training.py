"""Critic training vs a plain causal-LM fine-tune of the same backbone on the same tokens.

Both sides run forward + backward + AdamW step on identical batches, interleaved in one run; the critic uses the
library's token-level loss (`length_regression_loss`) and skips the LM head. Last line:
``ratio: <critic tokens/s ÷ causal-LM tokens/s>`` (expected ≥ 1.1).

    python benchmarks/critic_training.py [--vocab-size 32000] [--hidden-size 256] [--batch 8] [--seq-len 256]
"""

import argparse
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from lenvm_rl import LengthValueModel
from lenvm_rl.critic_training import LenVMDataCollator, length_regression_loss
from lenvm_rl.tiny import tiny_decoder_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="qwen2")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = tiny_decoder_config(args.architecture, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                                 num_layers=args.layers)
    causal_lm = AutoModelForCausalLM.from_config(config).train()
    with tempfile.TemporaryDirectory() as directory:
        causal_lm.save_pretrained(directory)
        critic = LengthValueModel.from_backbone(directory, gamma=0.997).train()

    prompt_length = 32
    rows = [{"prompt_ids": torch.randint(10, args.vocab_size, (prompt_length,)).tolist(),
             "completion_ids": torch.randint(10, args.vocab_size, (args.seq_len - prompt_length,)).tolist()}
            for _ in range(args.batch)]
    batch = LenVMDataCollator(pad_token_id=0)(rows)
    lm_labels = batch["input_ids"].clone()
    lm_labels[:, :prompt_length] = -100
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-5)
    lm_optimizer = torch.optim.AdamW(causal_lm.parameters(), lr=1e-5)

    def critic_step():
        values = critic(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).value
        length_regression_loss(values, batch["labels"], 0.997).backward()
        critic_optimizer.step()
        critic_optimizer.zero_grad(set_to_none=True)

    def lm_step():
        output = causal_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=lm_labels)
        output.loss.backward()
        lm_optimizer.step()
        lm_optimizer.zero_grad(set_to_none=True)

    critic_step(), lm_step()  # warm-up
    critic_times, lm_times = [], []
    for _ in range(args.steps):
        for fn, times in ((critic_step, critic_times), (lm_step, lm_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    tokens = args.batch * args.seq_len
    critic_tps, lm_tps = tokens / statistics.median(critic_times), tokens / statistics.median(lm_times)
    print(f"backbone: {args.architecture} hidden={args.hidden_size} layers={args.layers} vocab={args.vocab_size}")
    print(f"batch: {args.batch} x {args.seq_len} tokens, {args.steps} steps each (median)")
    print(f"critic training:    {critic_tps:10,.0f} tokens/s")
    print(f"causal-LM training: {lm_tps:10,.0f} tokens/s")
    print(f"ratio: {critic_tps / lm_tps:.3f}")


if __name__ == "__main__":
    main()
