"""Critic training vs a plain causal-LM fine-tune of the same backbone on the same tokens, at SmolLM2-135M's shape.

Both sides run forward + backward + AdamW step on identical batches, interleaved in one run; the critic uses the
library's token-level loss (``length_regression_loss``) and skips the LM head. Both models are randomly initialized
from a config with SmolLM2-135M's sizes (no download). The analytic forward ratio is printed for Qwen2.5 shapes too
(training costs about 3× a forward on both sides, so the tokens/s ratio is about its inverse). With
``--trainable-top-layers K`` the critic also trains with only its top K layers (``LenVMConfig.trainable_top_layers``)
and that speed is printed as well. Last line: ``ratio: <critic tokens/s ÷ causal-LM tokens/s>`` (full critic).

    python benchmarks/critic_training.py [--batch 2] [--seq-len 256] [--steps 4] [--trainable-top-layers 4]
"""

import argparse
import copy
import statistics
import tempfile
import time

import torch
from _shapes import SHAPES, analytic_critic_ratio, print_analytic_table, smollm2_135m_config
from transformers import AutoModelForCausalLM

from lenvm_rl import LengthValueModel
from lenvm_rl.trainer.critic import LenVMDataCollator, freeze_lower_layers, length_regression_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--trainable-top-layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: do not oversubscribe shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = smollm2_135m_config()
    causal_lm = AutoModelForCausalLM.from_config(config).train()
    with tempfile.TemporaryDirectory() as directory:
        causal_lm.save_pretrained(directory)
        critic = LengthValueModel.from_backbone(directory, gamma=0.997).train()
    critics = {"critic": critic}
    if args.trainable_top_layers is not None:
        partial = copy.deepcopy(critic)
        freeze_lower_layers(partial, args.trainable_top_layers)
        critics[f"critic, top {args.trainable_top_layers} layers"] = partial

    prompt_length = 32
    rows = [{"prompt_ids": torch.randint(10, config.vocab_size, (prompt_length,)).tolist(),
             "completion_ids": torch.randint(10, config.vocab_size, (args.seq_len - prompt_length,)).tolist()}
            for _ in range(args.batch)]
    batch = LenVMDataCollator(pad_token_id=0)(rows)
    lm_labels = batch["input_ids"].clone()
    lm_labels[:, :prompt_length] = -100
    optimizers = {name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
                  for name, model in critics.items()}
    lm_optimizer = torch.optim.AdamW(causal_lm.parameters(), lr=1e-5)

    def critic_step(name):
        def step():
            values = critics[name](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).value
            length_regression_loss(values, batch["labels"], 0.997).backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
        return step

    def lm_step():
        output = causal_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=lm_labels)
        output.loss.backward()
        lm_optimizer.step()
        lm_optimizer.zero_grad(set_to_none=True)

    sides = {name: critic_step(name) for name in critics} | {"causal-LM": lm_step}
    for fn in sides.values():  # warm-up
        fn()
    times = {name: [] for name in sides}
    for _ in range(args.steps):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.seq_len
    speed = {name: tokens / statistics.median(values) for name, values in times.items()}
    print(f"backbone: SmolLM2-135M shape (llama, hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"vocab {config.vocab_size}, random init); {args.threads} thread(s)")
    print_analytic_table(args.seq_len)
    expected, _ = analytic_critic_ratio(SHAPES["smollm2-135m"], args.seq_len)
    print(f"batch: {args.batch} x {args.seq_len} tokens, {args.steps} steps each (median)")
    for name, value in speed.items():
        print(f"{name + ' training:':<32} {value:10,.1f} tokens/s")
    if args.trainable_top_layers is not None:
        name = f"critic, top {args.trainable_top_layers} layers"
        print(f"top-{args.trainable_top_layers} critic ÷ full critic: {speed[name] / speed['critic']:.3f}")
    print(f"analytic (SmolLM2-135M, forward): causal LM / critic = {1 / expected:.3f}")
    print(f"ratio: {speed['critic'] / speed['causal-LM']:.3f}")


if __name__ == "__main__":
    main()
