"""Generation speed of SmolLM2-135M on this machine against its FLOPs bound, and what transformers offers for it.

Every row samples exactly ``--new-tokens`` tokens per sequence (EOS suppressed, KV cache), so timings do not depend on
when a completion would stop. The FLOPs bound is measured in the same run: a large fp32 matmul gives the machine's
sustained FLOP/s at this thread count, and ``forward_flops_per_token`` (``_shapes.py``) the model's FLOPs per
generated token at the mean context, so ``bound = FLOP/s ÷ FLOPs per token`` tokens/s at any batch size.

Configurations (each at every ``--batch-sizes``):

- ``default``: what ``generate`` does out of the box (dynamic cache, the model's attention, SDPA);
- ``eager``: the same with ``attn_implementation="eager"``;
- ``static``: ``cache_implementation="static"`` (a preallocated cache; no reallocation as the cache grows);
- ``static+compile``: the static cache with the forward compiled by ``torch.compile`` (transformers compiles it
  itself on accelerators; on CPU it needs ``CompileConfig(_compile_all_devices=True)``). The first call compiles
  (its time is the row's ``first call``);
- ``nucleus``: the default with the sampling warpers replaced by ``lenvm_rl.sampling.SamplingWarper`` (the
  same distribution, no vocabulary sort per step), as ``lenvm_rl.rollout.sample_completions`` samples.

Every configuration samples as the real-model study does: ``--temperature 0.7 --top-p 0.9``, no top-k.

With ``--model DIR`` it times that model (e.g. ``runs/smollm2-135m-instruct`` after ``lenvm-rl import-gguf``); without,
a random-init model of SmolLM2-135M's shape built in code (same cost per token). Last line:
``ratio: <tokens/s of the fastest configuration ÷ tokens/s of default, at --ratio-batch>``.

    python benchmarks/generation_speed.py [--model runs/smollm2-135m-instruct] [--threads 2]
"""

import argparse
import time

import torch
from _shapes import SHAPES, forward_flops_per_token, smollm2_135m_config
from transformers import AutoModelForCausalLM

CONFIGURATIONS = ("default", "eager", "static", "static+compile", "nucleus")


def sustained_flops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a ``size``³ fp32 matmul at ``threads`` threads, the best of ``repeats``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def load(model_dir: str | None, attention: str) -> torch.nn.Module:
    if model_dir:
        return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention).eval()
    return AutoModelForCausalLM.from_config(smollm2_135m_config(), attn_implementation=attention).eval()


def generate_kwargs(configuration: str, temperature: float, top_p: float) -> dict:
    if configuration == "nucleus":
        from transformers import LogitsProcessorList

        from lenvm_rl.sampling import SamplingWarper

        return {"temperature": 1.0, "top_p": 1.0,
                "logits_processor": LogitsProcessorList([SamplingWarper(temperature, 0, top_p)])}
    sampling = {"temperature": temperature, "top_p": top_p}
    if configuration.startswith("static"):
        kwargs = {"cache_implementation": "static"}
        if configuration == "static+compile":
            from transformers import CompileConfig

            config = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs
            config._compile_all_devices = True  # a class attribute, not an __init__ field
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
        return {**kwargs, **sampling}
    return sampling


def time_generate(model: torch.nn.Module, batch: int, prompt_len: int, new_tokens: int, configuration: str,
                  temperature: float, top_p: float) -> tuple[float, float]:
    """(tokens/s, seconds of the first call) sampling ``new_tokens`` per row from random prompts."""
    ids = torch.randint(10, model.config.vocab_size, (batch, prompt_len))
    eos = model.config.eos_token_id
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": new_tokens,
              "min_new_tokens": new_tokens, "do_sample": True, "top_k": 0, "pad_token_id": 0,
              "suppress_tokens": [eos] if eos is not None else None,
              **generate_kwargs(configuration, temperature, top_p)}
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(**kwargs)  # warm-up (and, for static+compile, the compilation) at the timed shapes
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(**kwargs)
        seconds = time.perf_counter() - start
    return batch * new_tokens / seconds, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: random init, SmolLM2-135M shape)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=CONFIGURATIONS)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's cores when it is idle)")
    parser.add_argument("--ratio-batch", type=int, default=32, help="batch size of the last line's ratio")
    args = parser.parse_args()
    if args.ratio_batch not in args.batch_sizes or "default" not in args.configurations:
        parser.error("the ratio needs --ratio-batch in --batch-sizes and the default configuration")
    torch.manual_seed(0)
    flops = sustained_flops(args.threads)
    context = args.prompt_len + args.new_tokens / 2
    per_token = sum(forward_flops_per_token(SHAPES["smollm2-135m"], int(context)).values())
    bound = flops / per_token
    print(f"model: {args.model or 'SmolLM2-135M shape, random init'}; {args.threads} thread(s); prompt "
          f"{args.prompt_len} tokens, {args.new_tokens} new tokens per row, sampling at temperature "
          f"{args.temperature}, top-p {args.top_p}")
    print(f"sustained fp32 matmul: {flops / 1e9:.1f} GFLOP/s; {per_token / 1e6:.0f} MFLOPs per token at context "
          f"{context:.0f}: FLOPs bound {bound:.0f} tokens/s")
    speeds: dict[tuple[str, int], float] = {}
    for configuration in args.configurations:
        torch.set_num_threads(args.threads)
        model = load(args.model, "eager" if configuration == "eager" else "sdpa")
        for batch in args.batch_sizes:
            speed, first = time_generate(model, batch, args.prompt_len, args.new_tokens, configuration,
                                         args.temperature, args.top_p)
            speeds[configuration, batch] = speed
            print(f"{configuration:>15} batch {batch:>3}: {speed:7.1f} tokens/s = {speed / bound:5.1%} of the bound "
                  f"({args.new_tokens * batch / speed / args.new_tokens * 1e3:6.1f} ms per step; first call "
                  f"{first:5.1f} s)")
        del model
    at = {configuration: speeds[configuration, args.ratio_batch] for configuration in args.configurations}
    best = max(at, key=at.get)
    print(f"fastest at batch {args.ratio_batch}: {best}, {at[best]:.1f} tokens/s ({at[best] / bound:.1%} of the "
          f"bound) against default {at['default']:.1f}")
    print(f"ratio: {at[best] / at['default']:.3f}")


if __name__ == "__main__":
    main()
