"""The one-processor sampling warper (lenvm_rl.sampling): the same scores as transformers' temperature →
top-k → top-p chain, with the nucleus found among the top candidates or, past them, by a full sort."""

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lenvm_rl.sampling import SamplingWarper


def _reference(scores, temperature, top_k, top_p):
    chain = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    chain += [TopKLogitsWarper(top_k)] if top_k else []
    chain += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    return LogitsProcessorList(chain)(None, scores.clone())


@pytest.mark.parametrize("temperature, top_k, top_p, candidates", [
    (1.0, 0, 0.9, 256), (0.7, 0, 0.9, 256), (0.7, 0, 0.95, 4), (1.3, 50, 0.8, 16), (1.0, 20, 1.0, 256),
    (0.5, 0, 0.5, 1), (0.9, 8, 0.9, 64),
])
def test_the_warper_equals_transformers_chain(temperature, top_k, top_p, candidates):
    generator = torch.Generator().manual_seed(0)
    # peaked rows (the nucleus among a few tokens) and flat ones (past any small candidate set)
    scores = torch.cat([torch.randn(6, 500, generator=generator) * 4, torch.randn(6, 500, generator=generator) * 0.1])
    scores[[0, 7], :300] = -float("inf")  # tokens an earlier processor removed (e.g. suppressed ones)
    ours = SamplingWarper(temperature, top_k, top_p, candidates=candidates)(None, scores)
    theirs = _reference(scores, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])
    if top_p < 1.0:  # the nucleus really cuts, and the flat rows keep more than the candidates
        kept = torch.isfinite(ours).sum(dim=-1)
        assert (kept[:6] < 500).all() and kept[6:].min() > min(candidates, top_k or 500, 200) // 2


def test_sampled_completions_match_transformers_sampling_token_for_token(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, set_seed

    from lenvm_rl.rollout import sample_completions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer("parity 1011")["input_ids"], tokenizer("parity 1")["input_ids"]]
    ours = sample_completions(model, tokenizer, prompts, num_samples=4, temperature=0.8, top_p=0.7,
                              max_new_tokens=12, seed=3)
    set_seed(3)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(input_ids=batch["input_ids"].repeat_interleave(4, dim=0),
                                attention_mask=batch["attention_mask"].repeat_interleave(4, dim=0),
                                generation_config=GenerationConfig(
                                    max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.7, top_k=0,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    theirs = output[:, batch["input_ids"].shape[1]:].tolist()
    assert len({tuple(ids) for ids, _ in ours}) > 1  # it samples
    for (ids, _), reference in zip(ours, theirs, strict=True):
        assert ids == reference[:len(ids)]


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0"), ({"top_k": -1}, "top_k must be ≥ 0"),
    ({"top_p": 0.0}, "top_p must lie in (0, 1]"), ({"candidates": 0}, "candidates must be ≥ 1"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        SamplingWarper(**kwargs)
