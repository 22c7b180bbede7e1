"""Plain sampling made cheaper on a CPU: the warpers in one logits processor with a nucleus that avoids sorting the
vocabulary, and a decoding loop that stops computing the rows that have ended.

transformers' ``TopPLogitsWarper`` sorts every row of the ``(B, V)`` scores at every step. On a CPU with a 49k
vocabulary at batch 32 that sort costs about as much as a third of SmolLM2-135M's forward pass
(``benchmarks/generation_speed.py``). The nucleus almost always lies among the few hundred most likely tokens, so
:class:`SamplingWarper` finds it with ``topk(candidates)`` and falls back to the full sort only for the rows whose
top candidates hold less than ``top_p`` of the mass. The result equals transformers' chain
``TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper`` (the order ``generate`` applies them in), up to
the order of tied scores and float rounding of a cumulative sum that lands exactly on ``top_p``.

With ``p_r`` the probabilities in descending order and ``D_r = p_0 + … + p_r``, the nucleus keeps rank ``r`` iff
``D_{r-1} < top_p`` (``D_{-1} = 0``: the top token always stays), which is transformers' rule ``1 − D_{r−1} >
1 − top_p`` written from the top. If ``D_{k−1} ≥ top_p`` for ``k = candidates``, no rank ``≥ k`` is kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["SamplingWarper", "decode_compacted"]


class SamplingWarper:
    """Temperature, top-k and top-p of ``generate``'s sampling as one logits processor (pass it in
    ``logits_processor`` with ``temperature=1.0, top_k=0, top_p=1.0`` in the generation config).

    Args:
        temperature: divides the scores (> 0).
        top_k: keep the ``top_k`` highest scores (0: off).
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p`` (1.0: off).
        candidates: how many top tokens the nucleus is looked for among before a row falls back to a full sort.
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, candidates: int = 256):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if top_k < 0:
            raise ValueError(f"top_k must be ≥ 0, got {top_k!r}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
        if candidates < 1:
            raise ValueError(f"candidates must be ≥ 1, got {candidates!r}")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.candidates = int(candidates)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """``scores``: ``(B, V)`` next-token logits; returns them warped, removed tokens at ``-inf``."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        vocab = scores.shape[-1]
        if self.top_k and self.top_k < vocab:
            threshold = scores.topk(self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < threshold, -float("inf"))
        if self.top_p >= 1.0:
            return scores
        k = min(self.candidates, vocab)
        top, indices = scores.topk(k, dim=-1)
        probs = (top - scores.logsumexp(dim=-1, keepdim=True)).exp()
        mass = probs.cumsum(dim=-1)
        keep = (mass - probs) < self.top_p  # D_{r-1} < top_p
        keep[..., 0] = True
        kept = torch.full_like(scores, -float("inf")).scatter(-1, indices, top.masked_fill(~keep, -float("inf")))
        wide = mass[..., -1] < self.top_p  # the nucleus reaches past the candidates: sort these rows in full
        if wide.any():
            kept[wide] = _full_nucleus(scores[wide], self.top_p)
        return kept


def _full_nucleus(scores: Tensor, top_p: float) -> Tensor:
    ordered, order = scores.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    keep = (probs.cumsum(dim=-1) - probs) < top_p
    keep[..., 0] = True
    return torch.full_like(scores, -float("inf")).scatter(-1, order, ordered.masked_fill(~keep, -float("inf")))


# Logits processors that read only the rows they are given (of the rows and step they see): they stay right on a batch
# that shrinks. A processor with per-row state of its own (classifier-free guidance, watermarks, prefix constraints
# indexed by batch position, LenVM guidance) does not, and is refused.
_ROW_INDEPENDENT = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
                    "TopHLogitsWarper", "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper",
                    "NoRepeatNGramLogitsProcessor", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
                    "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor",
                    "NoBadWordsLogitsProcessor", "SequenceBiasLogitsProcessor", "InfNanRemoveLogitsProcessor",
                    "ForcedEOSTokenLogitsProcessor", "ForcedBOSTokenLogitsProcessor", "ExponentialDecayLengthPenalty",
                    "LogitNormalization", "RepetitionPenaltyLogitsProcessor")
# what generate prepares for a text-only decoder; anything else (images, token types, embeddings) is refused
_MODEL_INPUTS = {"attention_mask", "position_ids", "logits_to_keep", "use_cache", "cache", "past_key_values"}


def _refusals(model: Any, logits_processor: Any, generation_config: Any, model_kwargs: dict[str, Any]) -> list[str]:
    import torch.distributed as dist
    from transformers.generation import logits_process
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module

    # transformers hands a custom loop synced_gpus only when it names a parameter _sample lacks: decide it here
    sharded = is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model)
    refused = {"sharded generation across processes (ZeRO-3 or FSDP)":
               sharded and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1,
               "return_dict_in_generate": generation_config.return_dict_in_generate,
               "beam search": (generation_config.num_beams or 1) > 1,
               "encoder-decoder models": model.config.is_encoder_decoder,
               f"cache_implementation={generation_config.cache_implementation!r}":
               generation_config.cache_implementation not in (None, "dynamic")}
    problems = [name for name, used in refused.items() if used]
    extra = sorted(set(model_kwargs) - _MODEL_INPUTS)
    if extra:
        problems.append(f"the model inputs {extra}")
    given = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if given is not None and given.get_seq_length() > 0:
        problems.append("a cache that already holds tokens")
    row_independent = tuple(getattr(logits_process, name) for name in _ROW_INDEPENDENT) + (SamplingWarper,)
    stateful = [type(p).__name__ for p in logits_processor or [] if not isinstance(p, row_independent)]
    if stateful:
        problems.append(f"logits processors that keep per-row state {stateful}")
    return problems


@torch.no_grad()
def decode_compacted(model: Any, input_ids: Tensor, logits_processor: Any, stopping_criteria: Any,
                     generation_config: Any, synced_gpus: bool = False, streamer: Any = None,
                     **model_kwargs: Any) -> Tensor:
    """Sampling (or greedy) decoding that drops every row from the batch, and from the KV cache, once it has ended.

    A ``custom_generate`` callable for transformers' ``generate``: ``model.generate(..., custom_generate=
    decode_compacted)`` prepares the inputs, logits processors (temperature, top-k, top-p, …) and stopping criteria
    (EOS, max length) as usual, and this loop runs the decoding. ``generate``'s own loop computes every row until the
    longest one ends; with completions of mean length ``L̄`` against a limit ``L_max``, about ``1 − L̄ / L_max`` of
    its row-steps produce padding. Here a row leaves the batch (``Cache.batch_select_indices``) at the step it ends,
    so the batch shrinks as completions finish.

    Each step draws ``x_t ~ softmax(processors(x_<t, logits_t))`` for the rows still running, the distribution
    ``generate`` samples from (the random stream differs, as fewer rows draw). Greedy decoding picks the same tokens.

    For text-only decoders with a dynamic KV cache (full or sliding-window attention) on one process or data-parallel
    ones. Refused, naming what: beam search, encoder-decoder models, other cache implementations, extra model inputs
    (images, token types), sharded generation (ZeRO-3, FSDP), and logits processors with per-row state of their own.
    A streamer is not fed.

    Args:
        input_ids: ``(B, T)`` left-padded prompts (``generate`` pads them); ``model_kwargs["attention_mask"]``
            ``(B, T)`` marks the real tokens (``None``: all real).
    Returns:
        ``(B, T + n)`` token ids as ``generate`` returns them: the prompts, then each row's completion, padded with
        ``generation_config.pad_token_id`` after it ended; ``n`` is the longest completion.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    problems = _refusals(model, logits_processor, generation_config, model_kwargs)
    if problems:
        raise ValueError(f"decode_compacted does not support {'; '.join(problems)}: use generate's own decoding")
    batch, width = input_ids.shape
    attention = model_kwargs.get("attention_mask")
    if attention is None:
        attention = torch.ones_like(input_ids)
    pad = generation_config._pad_token_tensor
    pad = int(pad) if pad is not None else 0
    positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    # the prompt's last position only, where generate found the model takes it: (B, T, V) prefill logits would be
    # gigabytes at an evaluation's batch
    last_only = {"logits_to_keep": model_kwargs["logits_to_keep"]} if "logits_to_keep" in model_kwargs else {}
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, cache=cache,
                   use_cache=True, **last_only).logits[:, -1]
    unsupported = sorted({type(layer).__name__ for layer in cache.layers
                          if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer)})
    if unsupported:  # e.g. linear-attention states, which a row selection would leave behind
        raise ValueError(f"decode_compacted cannot drop rows from the cache layers {unsupported} of "
                         f"{type(model).__name__}: use generate's own decoding")
    next_position = positions[:, -1] + 1
    alive = torch.arange(batch, device=input_ids.device)
    running = input_ids  # the rows still decoding, in full: processors such as no-repeat n-grams read them
    columns: list[Tensor] = []  # per step, (B,) tokens with pad for rows that had already ended
    while True:
        scores = logits_processor(running, logits.float())
        if generation_config.do_sample:
            tokens = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        tokens = tokens.to(input_ids.dtype)
        running = torch.cat([running, tokens[:, None]], dim=-1)
        column = torch.full((batch,), pad, dtype=input_ids.dtype, device=input_ids.device)
        columns.append(column.index_copy_(0, alive, tokens))
        ended = stopping_criteria(running, scores)
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, running, tokens = alive[keep], running[keep], tokens[keep]
            attention, next_position = attention[keep], next_position[keep]
            for processor in logits_processor or []:  # the one per-row setting of a row-independent processor
                if isinstance(processor, RepetitionPenaltyLogitsProcessor) and isinstance(
                        processor.prompt_ignore_length, Tensor):
                    processor.prompt_ignore_length = processor.prompt_ignore_length[keep]
        attention = torch.cat([attention, attention.new_ones(len(alive), 1)], dim=-1)
        logits = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position[:, None],
                       cache=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    return torch.cat([input_ids, torch.stack(columns, dim=1)], dim=-1)
