"""``lenvm-rl eval-length-control``: generate under length constraints with and without critic guidance and report
the LIFEBench length deviation and score of each (:mod:`lenvm_rl.decoding.length_score`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..data import check_local_path, load_prompt_dataset, resolve_device
from ..decoding.guided import LengthTarget, generated_lengths, guided_generate
from ..decoding.length_score import parse_constraints, summarize_length_control
from ..decoding.prediction import tokenize_prompts
from ..decoding.scoring import _as_id_list
from ..io import write_text_atomically
from ..modeling import LengthValueModel
from ._common import load_tokenizer

__all__ = ["EvalLengthControlArguments", "main"]


DEFAULT_EVAL_PROMPTS = (
    "Describe the ocean.",
    "Explain how a bicycle works.",
    "Write a short story about a robot.",
    "Give advice to a new student.",
    "What makes a good cup of tea?",
    "Summarize the water cycle.",
    "Describe your favorite city.",
    "Explain why the sky is blue.",
)

_RELATION_WORDS = {"equal_to": "exactly", "at_most": "at most", "at_least": "at least"}


@dataclass
class EvalLengthControlArguments:
    """Generate under length constraints with and without critic guidance and report LIFEBench deviation and score."""

    policy: str = field(metadata={"help": "Policy (causal LM) hub name or local directory."})
    critic: str = field(metadata={"help": "Critic checkpoint directory trained on the policy's tokenizer."})
    constraints: str = field(
        default="equal_to:16,at_most:16,at_least:24",
        metadata={"help": "Comma-separated NAME:T with NAME in equal_to, at_most, at_least; T counts EOS."},
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: the policy's)."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/parquet/csv of prompts (default: a built-in set of 8)."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Prompt column of prompts_file."})
    num_prompts: int = field(default=4, metadata={"help": "Number of prompts to use."})
    samples_per_prompt: int = field(default=2, metadata={"help": "Completions per prompt and constraint."})
    instruction_template: str = field(
        default="{prompt}\nAnswer in {relation} {target} tokens.",
        metadata={"help": "How the constraint is stated to the policy ({prompt}, {relation}, {target})."},
    )
    alpha: float = field(default=0.0, metadata={"help": "Tilt α inside the feasible set (> 0 shorter)."})
    top_k: int = field(default=8, metadata={"help": "Candidate count k (both runs sample from the same top-k)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus threshold inside the top-k."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the base distribution."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Token limit (default: 2 × the largest T)."})
    chat_template: bool = field(default=True, metadata={"help": "Apply the tokenizer's chat template if it has one."})
    seed: int = field(default=0, metadata={"help": "Random seed of both runs."})
    output_file: str | None = field(default=None, metadata={"help": "Optional JSON report path."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype: float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, ... or auto."})


DATACLASSES = (EvalLengthControlArguments,)


def main(args: EvalLengthControlArguments) -> None:
    from transformers import AutoModelForCausalLM

    constraints = parse_constraints(args.constraints)
    if args.num_prompts < 1 or args.samples_per_prompt < 1:
        raise ValueError("num_prompts and samples_per_prompt must be ≥ 1")
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    check_local_path(args.policy, "policy")
    check_local_path(args.critic, "critic")
    tokenizer = load_tokenizer(args.tokenizer, [args.policy])
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype).to(device).eval()
    critic = LengthValueModel.from_pretrained(args.critic, dtype=dtype).to(device).eval()
    if args.prompts_file is not None:
        table = load_prompt_dataset(args.prompts_file, column=args.prompt_column)
        prompts = list(table[args.prompt_column])[: args.num_prompts]
    else:
        prompts = list(DEFAULT_EVAL_PROMPTS[: args.num_prompts])
    max_new = args.max_new_tokens or 2 * max(length for _, length in constraints)
    eos = _as_id_list(tokenizer.eos_token_id)

    report = []
    header = f"{'constraint':<10} {'T':>5} | {'unguided dev%':>13} {'score':>6} | {'guided dev%':>11} {'score':>6}"
    print(header)
    print("-" * len(header))
    for constraint, length in constraints:
        texts = [
            args.instruction_template.format(prompt=p, relation=_RELATION_WORDS[constraint], target=length)
            for p in prompts
            for _ in range(args.samples_per_prompt)
        ]
        ids, mask = tokenize_prompts(tokenizer, texts, None if args.chat_template else False)
        ids, mask = ids.to(device), mask.to(device)
        sampling = {"do_sample": True, "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature}
        torch.manual_seed(args.seed)
        plain = policy.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos, **sampling,
        )
        torch.manual_seed(args.seed)
        guided = guided_generate(
            policy, critic, ids, mask, alpha=args.alpha, top_k=args.top_k, top_p=args.top_p,
            temperature=args.temperature, target=LengthTarget(constraint, length), tokenizer=tokenizer,
            max_new_tokens=max(max_new, length),
        )
        plain_lengths, _ = generated_lengths(plain[:, ids.shape[1] :], eos)
        guided_lengths, _ = generated_lengths(guided[:, ids.shape[1] :], eos)
        unguided = summarize_length_control(plain_lengths, length, constraint)
        with_guidance = summarize_length_control(guided_lengths, length, constraint)
        print(
            f"{constraint:<10} {length:>5} | {unguided['mean_abs_deviation_pct']:>13.1f} {unguided['mean_score']:>6.1f}"
            f" | {with_guidance['mean_abs_deviation_pct']:>11.1f} {with_guidance['mean_score']:>6.1f}"
        )
        report.append(
            {
                "constraint": constraint,
                "target": length,
                "unguided": unguided,
                "guided": with_guidance,
                "unguided_lengths": plain_lengths.tolist(),
                "guided_lengths": guided_lengths.tolist(),
            }
        )
    if args.output_file:
        settings = {key: value for key, value in vars(args).items() if key != "output_file"}
        write_text_atomically(args.output_file, json.dumps({"settings": settings, "results": report}, indent=2) + "\n")
        print(f"report written to {args.output_file}")
