"""Value-guided decoding with a LenVM critic: tilting and hard length targets (docs/method.md, "Inference uses").

**Tilting.** At every decoding step the policy's next-token distribution ``p`` (after temperature) is truncated to a
candidate set ``C`` (top-k, then top-p and min-p inside it), each candidate ``x`` is scored with the critic, and the
next token is drawn from

    p'(x) ∝ p(x) · exp(α · V(s_t ⊕ x))        x ∈ C

With our sign convention (V ∈ (-1, 0), near 0 = about to stop) **α > 0 steers shorter**, α < 0 longer, and α = 0 is
the base distribution renormalized on ``C``. The paper writes the same rule with ``β`` and ``sigmoid(z) = -V``, so
its ``β`` maps to ``α = -β`` (its "β < 0 for shorter" is our α > 0). EOS as a candidate leads to the terminal state:
its value is 0, whatever the network would say.

**Hard length targets.** A target ``T`` counts completion tokens **including EOS** (the ``L`` of docs/method.md): a
completion that meets ``equal_to`` T = 5 is four tokens followed by EOS. Before choosing token ``t`` (``t`` tokens
generated so far), the tokens still owed after it are ``owed = T - t - 1``, and a candidate's predicted remaining
length after it is ``l(x) = ln(1 + V(s_t ⊕ x)) / ln γ`` (0 for EOS). Then

* ``equal_to``: EOS is excluded while ``owed > 0``, forced when ``owed = 0``; otherwise the candidate with the
  smallest ``|l(x) - owed|`` is chosen (ties: the likeliest). With an oracle critic this hits T exactly.
* ``at_most``: candidates with ``l(x) ≤ owed + ½`` are feasible and the next token is drawn from ``p'`` restricted to
  them (so lengths spread below T, not always the shortest); if none is feasible the shortest is taken; EOS is forced
  at ``owed = 0``, so T is never exceeded.
* ``at_least``: EOS is excluded while ``owed > 0`` and, until then, only candidates with ``l(x) ≥ owed - ½`` are
  feasible (else the longest is taken); once T is reached, plain tilted sampling resumes.

Candidates are scored by :mod:`lenvm_rl.decoding.scoring` (cached one-pass scoring by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from ..length_math import value_to_length
from .length_score import check_constraint
from .scoring import (
    CachedCandidateScorer,
    UncachedCandidateScorer,
    _as_id_list,
    _critic_gamma,
    _critic_vocab_size,
    check_vocabulary,
)

__all__ = ["LengthTarget", "LengthGuidedLogitsProcessor", "guided_generate", "generated_lengths"]


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class LengthTarget:
    """A hard length constraint: ``constraint`` ∈ {equal_to, at_most, at_least} and ``length`` ``T`` ≥ 1.

    ``T`` counts completion tokens **including EOS** (docs/method.md's ``L``); ``length`` is one int for every row or a
    sequence with one target per row.
    """

    constraint: str
    length: int | Sequence[int] | Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraint", check_constraint(self.constraint))
        lengths = torch.as_tensor(self.length)
        if lengths.is_floating_point() and not bool((lengths == lengths.round()).all()):
            raise ValueError(f"length target T must be a whole number of tokens, got {lengths.tolist()}")
        if lengths.dim() > 1 or lengths.numel() == 0:
            raise ValueError(f"length target T must be an int or a 1-D sequence of ints, got {self.length!r}")
        if bool((lengths <= 0).any()):
            raise ValueError(
                f"length target T must be ≥ 1 token (EOS counts, so T = 1 is an immediate EOS), got {lengths.tolist()}"
            )

    def per_row(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """``(B,)`` int64 targets, broadcasting a single ``T`` over the batch."""
        lengths = torch.as_tensor(self.length, dtype=torch.int64, device=device).flatten()
        if lengths.numel() == 1:
            return lengths.expand(batch_size).clone()
        if lengths.numel() != batch_size:
            raise ValueError(f"got {lengths.numel()} length targets for a batch of {batch_size} rows")
        return lengths

    @property
    def max_length(self) -> int:
        return int(torch.as_tensor(self.length).max())


# ---------------------------------------------------------------------------------------------------- processor


class LengthGuidedLogitsProcessor(LogitsProcessor):
    """A ``transformers`` logits processor that tilts the next-token distribution with a LenVM critic.

    It returns logits that are ``-inf`` outside the candidate set ``C`` and ``log p(x) + α · V(s_t ⊕ x)`` on it, so
    sampling them draws from ``p' ∝ p · exp(α V)`` (greedy decoding takes the argmax of ``p'``); with a
    :class:`LengthTarget` it applies the rules of the module docstring (one-hot logits where a token is chosen
    deterministically). Use it through :func:`guided_generate`, which disables ``generate``'s own warpers (they
    would re-truncate or re-scale ``p'``) and passes the prompt's attention mask.

    The processor is stateful (it holds the critic's KV cache): one instance per ``generate`` call, greedy or
    sampling, ``num_beams=1``. Shapes at each call: ``input_ids`` ``(B, P + t)``, ``scores`` ``(B, V)``.

    Args:
        critic: the LenVM critic (a :class:`~lenvm_rl.modeling.LengthValueModel`), sharing the policy's tokenizer.
        alpha: tilt strength α; > 0 shorter, < 0 longer, 0 = base distribution on ``C`` (paper's β = -α).
        top_k: candidate count k ≥ 1 (each is scored by the critic).
        top_p: nucleus threshold applied inside the top-k (1.0 = off).
        min_p: keep candidates with ``p ≥ min_p · max p`` (0.0 = off).
        temperature: the base distribution is ``softmax(logits / temperature)``.
        eos_token_id: EOS id(s); EOS candidates get value 0 and EOS is the token targets force or forbid.
        target: optional :class:`LengthTarget` (needs the critic's γ).
        prompt_attention_mask: ``(B, P)`` mask of the left-padded prompt; without it, leading ``pad_token_id``
            tokens are taken as padding.
        pad_token_id: used only to infer the prompt's padding when no mask is given.
        tokenizer: if given, vocabularies are checked token-wise (see :func:`check_vocabulary`).
        scoring: ``"cached"`` (one forward per step, KV cache + 4-D mask) or ``"naive"`` (full prefix per candidate).
    """

    def __init__(
        self,
        critic: Any,
        alpha: float = 0.0,
        top_k: int = 8,
        top_p: float = 1.0,
        min_p: float = 0.0,
        temperature: float = 1.0,
        eos_token_id: int | Sequence[int] | None = None,
        target: LengthTarget | None = None,
        prompt_attention_mask: Tensor | None = None,
        pad_token_id: int | None = None,
        tokenizer: Any | None = None,
        scoring: str = "cached",
    ):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k (the candidate count k) must be an int ≥ 1, got {top_k!r}")
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
        if not 0.0 <= float(min_p) < 1.0:
            raise ValueError(f"min_p must lie in [0, 1), got {min_p!r}")
        if not float(temperature) > 0.0 or not math.isfinite(float(temperature)):
            raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
        if not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be finite, got {alpha!r}")
        if scoring not in ("cached", "naive"):
            raise ValueError(f"scoring must be 'cached' or 'naive', got {scoring!r}")
        if target is not None and not isinstance(target, LengthTarget):
            raise ValueError(f"target must be a LengthTarget, got {type(target).__name__}")
        eos = _as_id_list(eos_token_id)
        if not eos and tokenizer is not None:
            eos = _as_id_list(getattr(tokenizer, "eos_token_id", None))
        if not eos:
            raise ValueError("eos_token_id is required: EOS candidates map to value 0 and length targets place EOS")
        self.critic = critic
        self.alpha = float(alpha)
        self.top_k = top_k
        self.top_p = float(top_p)
        self.min_p = float(min_p)
        self.temperature = float(temperature)
        self.eos_token_ids = eos
        self.target = target
        self.gamma = _critic_gamma(critic) if target is not None else None
        self.prompt_attention_mask = prompt_attention_mask
        self.pad_token_id = pad_token_id
        self.tokenizer = tokenizer
        self.critic_vocab_size = _critic_vocab_size(critic)
        if max(eos) >= self.critic_vocab_size:
            raise ValueError(f"EOS id {max(eos)} is outside the critic's vocabulary of {self.critic_vocab_size}")
        self.scorer = CachedCandidateScorer(critic) if scoring == "cached" else UncachedCandidateScorer(critic)
        self._prompt_length: int | None = None
        self._last_width = 0
        # Diagnostics of the last step (read by tests and by anyone inspecting a decode).
        self.last_candidates: Tensor | None = None  # (B, k) candidate ids, most probable first
        self.last_candidate_values: Tensor | None = None  # (B, k) V(s_t ⊕ x), 0 for EOS
        self.last_candidate_mask: Tensor | None = None  # (B, k) True where x is in the candidate set
        self.last_state_values: Tensor | None = None  # (B,) V(s_t) (cached scoring only)

    # -------------------------------------------------------------- helpers

    def _prompt_valid(self, input_ids: Tensor) -> Tensor:
        if self.prompt_attention_mask is not None:
            mask = self.prompt_attention_mask.to(input_ids.device)
            if mask.shape != input_ids.shape:
                raise ValueError(
                    f"prompt_attention_mask {tuple(mask.shape)} does not match the prompt {tuple(input_ids.shape)}"
                )
            valid = mask.bool()
        elif self.pad_token_id is not None:
            # Left padding: a pad token counts as padding only before the row's first real token.
            valid = (input_ids != self.pad_token_id).long().cumsum(dim=1) > 0
        else:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        empty = ~valid.any(dim=1)
        if bool(empty.any()):
            raise ValueError(f"prompt row {int(empty.nonzero()[0])} is empty (all padding)")
        return valid

    def _start(self, input_ids: Tensor, vocab_size: int) -> None:
        check_vocabulary(vocab_size, self.critic, self.tokenizer)
        self._prompt_length = input_ids.shape[1]
        self._finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self._eos = torch.tensor(self.eos_token_ids, device=input_ids.device)
        self._targets = None
        if self.target is not None:
            self._targets = self.target.per_row(input_ids.shape[0], device=input_ids.device)

    # -------------------------------------------------------------- the step

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        batch, width = input_ids.shape
        vocab = scores.shape[-1]
        if self._prompt_length is None:
            self._start(input_ids, vocab)
            new_ids, new_valid = input_ids, self._prompt_valid(input_ids)
        else:
            if width != self._last_width + 1 or batch != self._finished.shape[0]:
                raise RuntimeError(
                    "LengthGuidedLogitsProcessor is stateful and must see one new token per call: use a new "
                    "processor for every generate() call, with num_beams=1 and no assisted decoding"
                )
            new_ids = input_ids[:, -1:]
            # Tokens after a row's EOS are padding generate fills in; they must not enter the critic's prefix.
            new_valid = (~self._finished)[:, None]
            self._finished = self._finished | torch.isin(new_ids[:, 0], self._eos)
        self._last_width = width
        step = width - self._prompt_length  # t: completion tokens generated so far

        log_probs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if vocab > self.critic_vocab_size:
            # Padding rows of a larger policy table (no tokenizer id maps there): the critic cannot score them.
            log_probs[:, self.critic_vocab_size :] = -math.inf
        eos_columns = torch.zeros(vocab, dtype=torch.bool, device=scores.device)
        eos_columns[self._eos] = True

        force_eos = forbid_eos = owed = None
        if self._targets is not None:
            owed = self._targets - step - 1  # tokens still owed after this one (EOS counted)
            constraint = self.target.constraint
            force_eos = (owed <= 0) & (constraint != "at_least")
            forbid_eos = (owed > 0) & (constraint != "at_most")
            log_probs = log_probs.masked_fill(forbid_eos[:, None] & eos_columns[None, :], -math.inf)

        # Candidate set: top-k, then top-p on the renormalized top-k (transformers' warper order), then min-p.
        k = min(self.top_k, vocab)
        candidate_logp, candidates = log_probs.topk(k, dim=-1)
        finite = torch.isfinite(candidate_logp)
        keep = finite.clone()
        if self.top_p < 1.0 or self.min_p > 0.0:
            probs = torch.softmax(candidate_logp, dim=-1)
            if self.top_p < 1.0:
                keep &= (probs.cumsum(dim=-1) - probs) < self.top_p
            if self.min_p > 0.0:
                keep &= probs >= self.min_p * probs[:, :1]
            keep[:, 0] = finite[:, 0]

        # A row whose every token is banned (by other processors plus the EOS rule) keeps its incoming scores.
        stuck = ~finite[:, 0]

        state_values, values = self.scorer.score(new_ids, new_valid, candidates)
        values = values.to(scores.device)
        values = values.masked_fill(torch.isin(candidates, self._eos), 0.0)  # EOS → terminal state, V = 0
        self.last_candidates, self.last_candidate_values, self.last_candidate_mask = candidates, values, keep
        self.last_state_values = None if state_values is None else state_values[:, -1].to(scores.device)

        tilted = (candidate_logp + self.alpha * values).masked_fill(~keep, -math.inf)
        chosen = torch.full((batch,), -1, dtype=torch.long, device=scores.device)  # candidate index or -1 (sample)
        if self._targets is not None:
            tilted, chosen = self._apply_target(tilted, values, keep, owed, chosen)

        out = torch.full_like(scores, -math.inf, dtype=torch.float32)
        out.scatter_(1, candidates, tilted)
        one_hot_rows = chosen >= 0
        if bool(one_hot_rows.any()):
            rows = one_hot_rows.nonzero().squeeze(1)
            token = candidates[rows, chosen[rows]]
            out[rows] = -math.inf
            out[rows, token] = 0.0
        if bool(stuck.any()):
            out[stuck] = scores[stuck].float()
        if force_eos is not None and bool(force_eos.any()):
            rows = force_eos.nonzero().squeeze(1)
            out[rows] = -math.inf
            out[rows, self.eos_token_ids[0]] = 0.0
        return out.to(scores.dtype)

    def _apply_target(
        self, tilted: Tensor, values: Tensor, keep: Tensor, owed: Tensor, chosen: Tensor
    ) -> tuple[Tensor, Tensor]:
        # Predicted remaining length after each candidate, EOS counted: l(x) = ln(1 + V) / ln γ (EOS: V = 0 → 0).
        remaining = value_to_length(values, self.gamma)
        owed_f = owed.to(remaining.dtype)[:, None]
        constraint = self.target.constraint
        if constraint == "equal_to":
            cost = (remaining - owed_f).abs().masked_fill(~keep, math.inf)
            best = cost.min(dim=-1, keepdim=True).values
            # Candidates come most-probable first, so the first near-best one breaks ties toward the policy.
            near_best = cost <= best + 1e-3
            return tilted, near_best.to(torch.int8).argmax(dim=-1)
        if constraint == "at_most":
            feasible = keep & (remaining <= owed_f + 0.5)
            fallback = remaining.masked_fill(~keep, math.inf).argmin(dim=-1)  # nothing fits: the shortest
        else:  # at_least
            feasible = keep & (remaining >= owed_f - 0.5)
            feasible = torch.where((owed > 0)[:, None], feasible, keep)  # T reached: free tilted sampling
            fallback = remaining.masked_fill(~keep, -math.inf).argmax(dim=-1)  # nothing fits: the longest
        none_feasible = ~feasible.any(dim=-1)
        chosen = torch.where(none_feasible, fallback, chosen)
        return tilted.masked_fill(~feasible, -math.inf), chosen


# ---------------------------------------------------------------------------------------------------- generate


_WARPER_OFF = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


def guided_generate(
    policy: Any,
    critic: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    alpha: float = 0.0,
    top_k: int = 8,
    top_p: float = 1.0,
    min_p: float = 0.0,
    temperature: float = 1.0,
    target: LengthTarget | None = None,
    tokenizer: Any | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    do_sample: bool = True,
    scoring: str = "cached",
    return_processor: bool = False,
    **generate_kwargs: Any,
) -> Any:
    """``policy.generate`` with critic-guided next-token choice (tilting and/or a hard length target).

    Args:
        policy: a causal LM with ``generate``; ``input_ids``/``attention_mask`` ``(B, P)``, left-padded.
        critic: LenVM critic on the policy's tokenizer; in eval mode, on any device.
        alpha, top_k, top_p, min_p, temperature, scoring: see :class:`LengthGuidedLogitsProcessor`.
        target: a :class:`LengthTarget` (T counts EOS). ``max_new_tokens`` defaults to ``T`` (``2·T`` for
            ``at_least``) and must be at least ``T`` for ``equal_to``/``at_least``.
        tokenizer: checks vocabularies token-wise and supplies EOS/pad ids.
        eos_token_id: EOS id(s) (default: the tokenizer's, else the policy's generation config).
        do_sample: sample from ``p'`` (True) or take its argmax (False).
        return_processor: also return the processor (its ``last_*`` diagnostics).
        **generate_kwargs: passed to ``generate`` (``max_new_tokens``, ``num_return_sequences``, ...). Sampling
            warpers (``temperature``, ``top_k``, ``top_p``, ``min_p``, ...) belong to this function, not here; a
            ``logits_processor`` list runs before the guide (it shapes the base distribution ``p``).

    Returns:
        What ``generate`` returns (``(B·n, P + T')`` sequences by default), and the processor if asked.
    """
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h"):
        if name in generate_kwargs:
            raise ValueError(f"pass {name} to guided_generate itself, not as a generate() keyword")
    if generate_kwargs.get("num_beams", 1) != 1:
        raise ValueError("guided decoding supports num_beams=1 only (the processor tracks one prefix per row)")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, P), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if not bool((attention_mask[:, -1] == 1).all()):
        raise ValueError("prompts must be left-padded (attention_mask[:, -1] == 1 for every row)")

    generation_config = policy.generation_config
    eos = _as_id_list(eos_token_id)
    if not eos and tokenizer is not None:
        eos = _as_id_list(tokenizer.eos_token_id)
    if not eos:
        eos = _as_id_list(generation_config.eos_token_id)
    extra_processors = list(generate_kwargs.pop("logits_processor", None) or [])
    pad = generate_kwargs.pop("pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else eos[0] if eos else None
    policy_vocab = int(policy.config.get_text_config().vocab_size)
    check_vocabulary(policy_vocab, critic, tokenizer)

    # Expand rows here rather than in generate, so the processor's mask and per-row targets line up with them.
    repeats = int(generate_kwargs.pop("num_return_sequences", 1))
    if repeats < 1:
        raise ValueError(f"num_return_sequences must be ≥ 1, got {repeats}")
    if repeats > 1:
        input_ids = input_ids.repeat_interleave(repeats, dim=0)
        attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        if target is not None and torch.as_tensor(target.length).numel() > 1:
            lengths = torch.as_tensor(target.length).repeat_interleave(repeats)
            target = LengthTarget(target.constraint, lengths)

    if target is not None:
        target.per_row(input_ids.shape[0])  # one T, or one per row: fail before generating
        needed = target.max_length
        default = 2 * needed if target.constraint == "at_least" else needed
        generate_kwargs.setdefault("max_new_tokens", default)
        if target.constraint != "at_most" and generate_kwargs["max_new_tokens"] < needed:
            raise ValueError(
                f"max_new_tokens={generate_kwargs['max_new_tokens']} cannot reach the {target.constraint} target "
                f"T={needed} (T counts EOS)"
            )

    processor = LengthGuidedLogitsProcessor(
        critic,
        alpha=alpha,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        temperature=temperature,
        eos_token_id=eos,
        target=target,
        prompt_attention_mask=attention_mask,
        pad_token_id=pad,
        tokenizer=tokenizer,
        scoring=scoring,
    )
    sampling = dict(_WARPER_OFF) if do_sample else {}
    if do_sample and generation_config.min_p is not None:
        sampling["min_p"] = 0.0
    output = policy.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_processor=[*extra_processors, processor],
        do_sample=do_sample,
        eos_token_id=eos,
        pad_token_id=pad,
        **sampling,
        **generate_kwargs,
    )
    return (output, processor) if return_processor else output


def generated_lengths(completion_ids: Tensor, eos_token_id: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Lengths of generated completions, EOS counted (docs/method.md), and whether each terminated.

    ``completion_ids`` ``(B, T)`` are the generated columns (``sequences[:, P:]``). A row's length runs through its
    first EOS; a row without EOS (truncated at the token limit) has length ``T``. Returns ``(lengths, terminated)``,
    ``(B,)`` int64 and ``(B,)`` bool.
    """
    eos = torch.tensor(_as_id_list(eos_token_id), device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos)
    terminated = is_eos.any(dim=1)
    first_eos = is_eos.to(torch.int8).argmax(dim=1)
    width = torch.full_like(first_eos, completion_ids.shape[1])
    return torch.where(terminated, first_eos + 1, width).long(), terminated
