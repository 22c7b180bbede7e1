"""What the critic adds to exact-length decoding: how natural the forced ending is.

Under an ``equal_to`` target the guided decoder forbids EOS before T and forces it at T, so every guided completion
has length T and a LIFEBench score of 100 whatever the critic says. The critic's job is to steer the text so that it
*can* end at T. This script measures that: for each target it decodes with the trained critic and with an untrained
one (the same backbone with a fresh value head, whose near-constant values leave the choice to the policy: greedy
text cut at T), then reads the policy's own distribution at the forced step:

- ``p_eos``: the policy's probability of EOS where EOS was forced (mean over completions);
- ``eos_in_top8``: the fraction of completions where EOS was among the policy's 8 most likely tokens there;
- ``mean_logp``: the policy's mean log-probability per completion token (fluency; EOS excluded).

Expected wall time with OMP_NUM_THREADS=1 on a shared 2-core CPU: about 10 minutes.

    OMP_NUM_THREADS=1 python recipes/smollm2/ending_quality.py --policy runs/smollm2-135m-instruct \
        --critic runs/smollm2-critic-top4 --output docs/real_model/ending_quality.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    from transformers import AutoModelForCausalLM

    from lenvm_rl import LengthTarget, LengthValueModel, guided_generate, tokenize_prompts
    from lenvm_rl.data import load_prompt_dataset
    from lenvm_rl.modeling import check_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="runs/smollm2-135m-instruct")
    parser.add_argument("--critic", default="runs/smollm2-critic-top4")
    parser.add_argument("--prompts", default="recipes/smollm2/data/length_control.jsonl")
    parser.add_argument("--targets", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--template", default="{prompt} Answer in exactly {target} tokens.")
    parser.add_argument("--top_k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    from transformers import AutoTokenizer

    tokenizer = check_tokenizer(AutoTokenizer.from_pretrained(args.policy))
    policy = AutoModelForCausalLM.from_pretrained(args.policy).eval()
    trained = LengthValueModel.from_pretrained(args.critic).eval()
    torch.manual_seed(args.seed)
    untrained = LengthValueModel.from_backbone(args.policy, gamma=trained.gamma).eval()
    critics = {"trained critic": trained, "untrained head": untrained}
    prompts = list(load_prompt_dataset(args.prompts)["prompt"])
    eos = tokenizer.eos_token_id

    results = []
    for target in args.targets:
        texts = [args.template.format(prompt=p, target=target) for p in prompts]
        ids, mask = tokenize_prompts(tokenizer, texts)
        for name, critic in critics.items():
            torch.manual_seed(args.seed)
            with torch.inference_mode():
                out = guided_generate(policy, critic, ids, mask, top_k=args.top_k, temperature=args.temperature,
                                      target=LengthTarget("equal_to", target), tokenizer=tokenizer)
                completions = out[:, ids.shape[1]:]
                full_mask = torch.cat([mask, torch.ones_like(completions)], dim=1)
                logits = policy(input_ids=out, attention_mask=full_mask).logits[:, ids.shape[1] - 1:-1].float()
            log_probs = torch.log_softmax(logits, dim=-1)                      # (B, T): the policy at each step
            forced = target - 1                                                # the step where EOS is forced
            assert bool((completions[:, forced] == eos).all()), "EOS was not at T"
            p_eos = log_probs[:, forced, eos].exp()
            rank = (log_probs[:, forced] > log_probs[:, forced, eos:eos + 1]).sum(dim=-1)
            token_logp = log_probs[:, :forced].gather(-1, completions[:, :forced, None]).squeeze(-1)
            entry = {"target": target, "critic": name, "num_completions": len(texts),
                     "p_eos": float(p_eos.mean()), "eos_in_top8": float((rank < 8).float().mean()),
                     "mean_logp": float(token_logp.mean()),
                     "example": tokenizer.decode(completions[0], skip_special_tokens=True)}
            results.append(entry)
            print(f"T={target:>3} {name:<15} p_eos {entry['p_eos']:.3f}  EOS in policy top-8 "
                  f"{100 * entry['eos_in_top8']:5.1f}%  mean log p {entry['mean_logp']:.2f}  | {entry['example']!r}")
    summary = {"settings": vars(args), "results": results, "seconds": round(time.perf_counter() - start, 1)}
    if args.output:
        from lenvm_rl.io import write_text_atomically

        write_text_atomically(args.output, json.dumps(summary, indent=2) + "\n")
    print(f"done in {summary['seconds']:.0f} s; mean over targets: " + ", ".join(
        f"{name}: p_eos {statistics.fmean(r['p_eos'] for r in results if r['critic'] == name):.3f}"
        for name in critics))


if __name__ == "__main__":
    main()
