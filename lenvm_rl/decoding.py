"""Value-guided decoding and prompt-boundary length prediction with a LenVM critic (DESIGN.md §2, "Inference uses").

**Tilting.** At every decoding step the policy's next-token distribution ``p`` (after temperature) is truncated to a
candidate set ``C`` (top-k, then top-p and min-p inside it), each candidate ``x`` is scored with the critic, and the
next token is drawn from

    p'(x) ∝ p(x) · exp(α · V(s_t ⊕ x))        x ∈ C

With our sign convention (V ∈ (-1, 0), near 0 = about to stop) **α > 0 steers shorter**, α < 0 longer, and α = 0 is
the base distribution renormalized on ``C``. The paper writes the same rule with ``β`` and ``sigmoid(z) = -V``, so
its ``β`` maps to ``α = -β`` (its "β < 0 for shorter" is our α > 0). EOS as a candidate leads to the terminal state:
its value is 0, whatever the network would say.

**Hard length targets.** A target ``T`` counts completion tokens **including EOS** (the ``L`` of DESIGN.md §2): a
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

**Cached one-pass candidate scoring.** :class:`CachedCandidateScorer` keeps the critic's own KV cache of every row's
prefix. Each step it runs *one* critic forward over ``[new prefix tokens ; x_1 … x_k]``: the new tokens attend
causally to the cached prefix, each candidate attends to the prefix and to itself only (a 4-D additive attention
mask), all candidates get the next position id; then the ``k`` candidate entries are cropped from the cache.
Batched over left-padded rows; finished rows are masked. :func:`score_candidates_uncached` is the reference that
re-runs the critic over the full prefix for every candidate.

**Length prediction.** :func:`predict_length` reads ``V(s_0)`` at the prompt boundary of text prompts. Being the
inverse of a mean *value*, it estimates the value-space length ``ln(E[γ^L]) / ln γ``, which sits below the mean raw
length when lengths vary (Jensen); compare it with the value-space ground truth ``ln(1 - mean_i(1 - γ^{L_i})) / ln γ``
(``lenvm_rl.evaluation.value_space_length``), not with the mean of the raw lengths.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from .cli import register
from .data import resolve_device
from .length_math import check_gamma, length_to_value, value_to_length
from .length_score import CONSTRAINT_TYPES, check_constraint, summarize_length_control

__all__ = [
    "LengthTarget",
    "CachedCandidateScorer",
    "LengthGuidedLogitsProcessor",
    "check_vocabulary",
    "score_candidates_uncached",
    "guided_generate",
    "generated_lengths",
    "tokenize_prompts",
    "predict_length",
    "parse_constraints",
]

# Attention implementations that take a custom 4-D additive mask as-is (transformers' masking_utils returns an
# already-4-D mask unchanged and sdpa/eager add it to the scores); flash attention only knows padding masks.
_MASKABLE_ATTENTION = ("sdpa", "eager")


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class LengthTarget:
    """A hard length constraint: ``constraint`` ∈ {equal_to, at_most, at_least} and ``length`` ``T`` ≥ 1.

    ``T`` counts completion tokens **including EOS** (DESIGN.md §2's ``L``); ``length`` is one int for every row or a
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


# ---------------------------------------------------------------------------------------------------- critic helpers


def _backbone_config(critic: Any) -> Any:
    backbone = getattr(critic, "backbone", None)
    return getattr(backbone, "config", None)


def _critic_vocab_size(critic: Any) -> int:
    embeddings = critic.get_input_embeddings() if hasattr(critic, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return int(embeddings.num_embeddings)
    config = _backbone_config(critic)
    if config is not None and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    raise ValueError(f"cannot tell the vocabulary size of critic {type(critic).__name__}: it has no input embeddings")


def _critic_device_dtype(critic: Any) -> tuple[torch.device, torch.dtype]:
    # The backbone's storage dtype (the head is float32 by design): the 4-D mask must match the attention dtype.
    embeddings = critic.get_input_embeddings() if hasattr(critic, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device, embeddings.weight.dtype
    parameter = next(critic.parameters())
    return parameter.device, parameter.dtype


def _critic_gamma(critic: Any) -> float:
    return check_gamma(critic.gamma)


def _cache_kwarg(critic: Any) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; ask the backbone which one it takes.
    backbone = getattr(critic, "backbone", None)
    if backbone is None:
        return "cache"
    parameters = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in parameters or "past_key_values" not in parameters else "past_key_values"


def _check_cached_scoring_supported(critic: Any) -> None:
    config = _backbone_config(critic)
    if config is None:
        return
    implementation = getattr(config, "_attn_implementation", None)
    if implementation is not None and implementation not in _MASKABLE_ATTENTION:
        raise ValueError(
            f"cached candidate scoring passes a custom 4-D attention mask, which attn_implementation "
            f"{implementation!r} does not take; load the critic with attn_implementation='sdpa' (or 'eager'), or use "
            "scoring='naive'"
        )
    layer_types = getattr(config, "layer_types", None) or ()
    sliding = any("sliding" in str(kind) for kind in layer_types)
    if not layer_types and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        sliding = True
    if sliding:
        raise ValueError(
            "cached candidate scoring does not support sliding-window attention layers (their cache drops old keys "
            "the 4-D mask refers to); use scoring='naive' for this critic"
        )


def check_vocabulary(policy_vocab_size: int, critic: Any, tokenizer: Any | None = None) -> None:
    """Raise ``ValueError`` unless the critic can score every token the policy can emit.

    With a tokenizer, every token id it defines (``len(tokenizer)``) must have an embedding in the critic and a logit
    in the policy; embedding tables padded to different sizes are fine (Qwen2.5-7B pads to 152064 rows, Qwen2.5-1.5B
    to 151936) and policy logits past the critic's table are never candidates. Without one, the table sizes must match.
    """
    critic_vocab = _critic_vocab_size(critic)
    if tokenizer is not None:
        tokens = len(tokenizer)
        if tokens > critic_vocab:
            raise ValueError(
                f"critic vocabulary mismatch: the critic embeds {critic_vocab} tokens but the tokenizer defines "
                f"{tokens}; the critic must be trained on the policy's tokenizer"
            )
        if tokens > policy_vocab_size:
            raise ValueError(
                f"policy vocabulary mismatch: the policy has {policy_vocab_size} logits but the tokenizer defines "
                f"{tokens} tokens"
            )
    elif policy_vocab_size != critic_vocab:
        raise ValueError(
            f"critic vocabulary mismatch: the critic embeds {critic_vocab} tokens, the policy emits "
            f"{policy_vocab_size} logits; the critic must share the policy's tokenizer (if it does and only the "
            "embedding tables are padded differently, pass tokenizer= so token ids are checked instead of table sizes)"
        )


# ---------------------------------------------------------------------------------------------------- scoring


class CachedCandidateScorer:
    """Scores ``k`` candidate next tokens per row with one critic forward per step, reusing the critic's KV cache.

    Call :meth:`score` once per decoding step with the tokens that joined the prefix since the last call (the whole
    left-padded prompt on the first call, the sampled token afterwards) and the candidates ``(B, k)``. Inside, one
    forward runs over ``n + k`` query positions against ``S`` cached keys with the additive mask

        new token i  → cached prefix (valid keys) + new tokens j ≤ i (valid)
        candidate c  → cached prefix (valid keys) + all valid new tokens + candidate c itself

    and position ids ``p_i`` (running count of valid tokens) for new tokens, the next position for every candidate.
    The candidates' ``k`` cache entries are then cropped, so the cache always holds exactly the prefix. Every query
    also sees itself, so a fully padded query row never produces NaN; padded keys are never seen by valid queries.
    """

    def __init__(self, critic: Any):
        _check_cached_scoring_supported(critic)
        self.critic = critic
        self._cache_kwarg = _cache_kwarg(critic)
        self.device, self.dtype = _critic_device_dtype(critic)
        self.reset()

    def reset(self) -> None:
        """Forget the cached prefix (start a new batch)."""
        self.cache: Any = None
        self.key_valid: Tensor | None = None  # (B, S) bool: which cached keys are real tokens
        self.next_position: Tensor | None = None  # (B,) position id the next valid token gets

    @torch.no_grad()
    def score(self, new_ids: Tensor, new_valid: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Extend the cached prefix by ``new_ids`` and score ``candidates`` after it.

        Args:
            new_ids: ``(B, n)`` tokens appended to each prefix (n ≥ 1).
            new_valid: ``(B, n)`` bool/0-1, False for padding (left padding of the prompt, tokens after EOS).
            candidates: ``(B, k)`` candidate next-token ids.

        Returns:
            ``(new_values, candidate_values)``: ``(B, n)`` values ``V`` read at the new tokens (the last column is
            ``V(s_t)`` of the current state) and ``(B, k)`` values ``V(s_t ⊕ x)``, float32.
        """
        batch, n = new_ids.shape
        k = candidates.shape[1]
        if candidates.shape[0] != batch or new_valid.shape != new_ids.shape:
            raise ValueError(
                f"new_ids {tuple(new_ids.shape)}, new_valid {tuple(new_valid.shape)} and candidates "
                f"{tuple(candidates.shape)} must share the batch dimension and new_ids/new_valid one shape"
            )
        device = self.device
        new_ids, candidates = new_ids.to(device), candidates.to(device)
        new_valid = new_valid.to(device=device, dtype=torch.bool)
        if self.key_valid is None:
            self.key_valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
            self.next_position = torch.zeros(batch, dtype=torch.long, device=device)
        elif self.key_valid.shape[0] != batch:
            raise ValueError(f"the cached prefix has {self.key_valid.shape[0]} rows, this step has {batch}")
        past = self.key_valid.shape[1]

        # Positions count valid tokens only, as LengthValueModel.forward derives them from a 2-D mask (cumsum - 1),
        # so cached and uncached scoring agree on left-padded rows.
        new_positions = (self.next_position[:, None] + new_valid.long().cumsum(dim=1) - 1).clamp(min=0)
        self.next_position = self.next_position + new_valid.long().sum(dim=1)
        candidate_positions = self.next_position[:, None].expand(batch, k)

        queries = n + k
        allowed = torch.zeros(batch, queries, past + queries, dtype=torch.bool, device=device)
        allowed[:, :, :past] = self.key_valid[:, None, :]
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        allowed[:, :n, past : past + n] = causal[None] & new_valid[:, None, :]
        allowed[:, n:, past : past + n] = new_valid[:, None, :]
        diagonal = torch.arange(queries, device=device)
        allowed[:, diagonal, past + diagonal] = True
        mask = torch.zeros(batch, 1, queries, past + queries, dtype=self.dtype, device=device)
        mask = mask.masked_fill(~allowed[:, None], torch.finfo(self.dtype).min)

        kwargs = {self._cache_kwarg: self.cache} if self.cache is not None else {}
        output = self.critic(
            input_ids=torch.cat([new_ids, candidates], dim=1),
            attention_mask=mask,
            position_ids=torch.cat([new_positions, candidate_positions], dim=1),
            use_cache=True,
            **kwargs,
        )
        cache = output.cache
        if cache is None:
            raise ValueError(f"critic {type(self.critic).__name__} returned no KV cache with use_cache=True")
        # Drop the candidates: the cache must hold exactly the prefix for the next step.
        cache.crop(-k)
        self.cache = cache
        self.key_valid = torch.cat([self.key_valid, new_valid], dim=1)
        values = output.value.float()
        return values[:, :n], values[:, n:]


@torch.no_grad()
def score_candidates_uncached(
    critic: Any, prefix_ids: Tensor, prefix_mask: Tensor, candidates: Tensor, micro_batch_size: int | None = None
) -> Tensor:
    """Reference (naive) candidate scoring: the critic re-reads the full prefix for every candidate.

    Runs the critic on ``B·k`` rows ``prefix ⊕ x`` with a plain 2-D padding mask and reads the last position.

    Args:
        critic: a :class:`~lenvm_rl.modeling.LengthValueModel` (or anything with its ``forward``).
        prefix_ids, prefix_mask: ``(B, S)``; padding anywhere (left padding, tokens after EOS) is masked with 0.
        candidates: ``(B, k)`` candidate next-token ids.
        micro_batch_size: rows per forward (``None``: all ``B·k`` at once).

    Returns:
        ``(B, k)`` float32 values ``V(prefix ⊕ x)``.
    """
    batch, k = candidates.shape
    device, _ = _critic_device_dtype(critic)
    prefix_ids, prefix_mask, candidates = prefix_ids.to(device), prefix_mask.to(device).long(), candidates.to(device)
    ids = torch.cat([prefix_ids.repeat_interleave(k, dim=0), candidates.reshape(-1, 1)], dim=1)
    mask = torch.cat([prefix_mask.repeat_interleave(k, dim=0), prefix_mask.new_ones(batch * k, 1)], dim=1)
    step = micro_batch_size or ids.shape[0]
    values = [
        critic(input_ids=ids[start : start + step], attention_mask=mask[start : start + step]).value[:, -1]
        for start in range(0, ids.shape[0], step)
    ]
    return torch.cat(values).float().reshape(batch, k)


class _UncachedScorer:
    """The naive scorer behind ``scoring='naive'``: same interface as :class:`CachedCandidateScorer`."""

    def __init__(self, critic: Any):
        self.critic = critic
        self.prefix_ids: Tensor | None = None
        self.prefix_valid: Tensor | None = None

    def score(self, new_ids: Tensor, new_valid: Tensor, candidates: Tensor) -> tuple[Tensor | None, Tensor]:
        new_valid = new_valid.to(torch.bool)
        if self.prefix_ids is None:
            self.prefix_ids, self.prefix_valid = new_ids, new_valid
        else:
            self.prefix_ids = torch.cat([self.prefix_ids, new_ids], dim=1)
            self.prefix_valid = torch.cat([self.prefix_valid, new_valid], dim=1)
        return None, score_candidates_uncached(self.critic, self.prefix_ids, self.prefix_valid, candidates)


# ---------------------------------------------------------------------------------------------------- processor


def _as_id_list(ids: int | Sequence[int] | Tensor | None) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


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
        self.scorer = CachedCandidateScorer(critic) if scoring == "cached" else _UncachedScorer(critic)
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
    """Lengths of generated completions, EOS counted (DESIGN.md §2), and whether each terminated.

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


# ---------------------------------------------------------------------------------------------------- prediction


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[dict]], use_chat_template: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Left-padded ``(B, P)`` ``input_ids`` and ``attention_mask`` for text or conversational prompts.

    ``use_chat_template=None`` applies the tokenizer's chat template when it has one (a string becomes one user
    turn; a list of ``{"role", "content"}`` messages is used as is) and adds the generation prompt, so the last
    prompt token is where the assistant's completion starts — the state ``s_0`` the critic was trained on.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template is None:
        use_chat_template = has_template
    if use_chat_template and not has_template:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    texts = []
    for prompt in prompts:
        if use_chat_template:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        elif isinstance(prompt, str):
            texts.append(prompt)
        else:
            raise ValueError("conversational prompts (lists of messages) need a tokenizer with a chat template")
    # The chat template already wrote any BOS it wants; adding special tokens again would double it.
    encoded = tokenizer(
        texts, padding=True, padding_side="left", add_special_tokens=not use_chat_template, return_tensors="pt"
    )
    if encoded["input_ids"].shape[1] == 0 or not bool(encoded["attention_mask"].any(dim=1).all()):
        raise ValueError("every prompt must tokenize to at least one token")
    return encoded["input_ids"], encoded["attention_mask"]


@torch.no_grad()
def predict_length(
    critic: Any,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[dict]],
    batch_size: int = 16,
    use_chat_template: bool | None = None,
) -> Tensor:
    """Predicted completion length (tokens, EOS included) of each text prompt: ``ln(1 + V(s_0)) / ln γ``.

    Args:
        critic: a :class:`~lenvm_rl.modeling.LengthValueModel` with γ in its config.
        tokenizer: the critic's (= the policy's) tokenizer.
        prompts: ``N`` strings, or ``N`` message lists for a chat tokenizer.
        batch_size: prompts per forward pass.
        use_chat_template: see :func:`tokenize_prompts` (``None``: apply it when the tokenizer has one).

    Returns:
        ``(N,)`` float32 lengths. This is the *value-space* length ``ln(E[γ^L]) / ln γ``, below the mean raw length
        when lengths vary; evaluate it against ``lenvm_rl.evaluation.value_space_length`` of sampled lengths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    prompts = list(prompts)
    device, _ = _critic_device_dtype(critic)
    lengths = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = tokenize_prompts(tokenizer, prompts[start : start + batch_size], use_chat_template)
        lengths.append(critic.predict_length(ids.to(device), mask.to(device)).float().cpu())
    if not lengths:
        raise ValueError("no prompts given")
    return torch.cat(lengths)


# ---------------------------------------------------------------------------------------------------- CLI


def parse_constraints(spec: str) -> list[tuple[str, int]]:
    """Parse ``"equal_to:16,at_most:32"`` into ``[("equal_to", 16), ("at_most", 32)]`` (names checked, T ≥ 1)."""
    constraints = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition(":")
        if not sep:
            raise ValueError(f"constraint {item!r} must look like NAME:T with NAME in {', '.join(CONSTRAINT_TYPES)}")
        try:
            length = int(value)
        except ValueError:
            raise ValueError(f"constraint {item!r}: T must be an integer number of tokens") from None
        target = LengthTarget(name, length)
        constraints.append((target.constraint, length))
    if not constraints:
        raise ValueError("no length constraints given")
    return constraints



def _load_tokenizer(name: str | None, fallbacks: Sequence[str | None]) -> Any:
    from transformers import AutoTokenizer

    from .modeling import check_tokenizer

    errors = []
    for candidate in [name, *fallbacks] if name else list(fallbacks):
        if not candidate:
            continue
        try:
            return check_tokenizer(AutoTokenizer.from_pretrained(candidate))
        except (OSError, ValueError) as error:
            if name:
                raise
            errors.append(f"{candidate}: {error}")
    raise ValueError("no tokenizer found; pass --tokenizer (tried " + "; ".join(errors or ["nothing"]) + ")")


def _load_table(path: str, split: str = "train") -> Any:
    import datasets

    location = Path(path)
    if not location.exists():
        raise FileNotFoundError(f"dataset {path} does not exist (expected a local json/jsonl/parquet/csv file)")
    if location.is_dir():
        loaded = datasets.load_from_disk(str(location))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    builder = builders.get(location.suffix.lower())
    if builder is None:
        raise ValueError(f"dataset {path}: unsupported file type {location.suffix!r} (use json, jsonl, parquet, csv)")
    return datasets.load_dataset(builder, data_files=str(location), split="train")


def _write_table(dataset: Any, path: str) -> None:
    from .io import files_replaced_atomically

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".json", ".jsonl", ".parquet", ".csv"):
        raise ValueError(f"output file {path}: unsupported type {suffix!r} (use .jsonl, .json, .parquet or .csv)")
    with files_replaced_atomically(target.parent if str(target.parent) else Path(".")) as scratch:
        staged = Path(scratch) / target.name
        if suffix == ".parquet":
            dataset.to_parquet(str(staged))
        elif suffix == ".csv":
            dataset.to_csv(str(staged), index=False)
        else:
            dataset.to_json(str(staged), lines=True, force_ascii=False)


@dataclass
class PredictLengthArguments:
    """Predict each prompt's completion length at the prompt boundary with a LenVM critic and write the predictions."""

    critic: str = field(metadata={"help": "Critic checkpoint directory (LengthValueModel.save_pretrained)."})
    dataset: str = field(metadata={"help": "Local json/jsonl/parquet/csv file (or save_to_disk directory)."})
    output_file: str = field(metadata={"help": "Where to write the rows plus predictions (.jsonl, .parquet, .csv)."})
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column with the prompts (strings, or message lists for chat models)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the critic directory, then its backbone's source)."}
    )
    lengths_column: str | None = field(
        default=None,
        metadata={
            "help": "Optional column of realized lengths (int or list of sampled lengths per prompt, EOS counted): "
            "adds the value-space ground truth and reports the mean relative error."
        },
    )
    chat_template: bool = field(
        default=True, metadata={"help": "Apply the tokenizer's chat template when it has one."}
    )
    split: str = field(default="train", metadata={"help": "Split to read from a save_to_disk DatasetDict."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per critic forward pass."})
    dtype: str = field(default="float32", metadata={"help": "Backbone dtype: float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, ... or auto."})


def _predict_length_cli(args: PredictLengthArguments) -> None:
    from .evaluation import value_space_length
    from .modeling import LengthValueModel

    critic = LengthValueModel.from_pretrained(args.critic, dtype=getattr(torch, args.dtype))
    critic.to(resolve_device(args.device)).eval()
    gamma = critic.gamma
    tokenizer = _load_tokenizer(args.tokenizer, [args.critic, critic.config.decoder_name_or_path])
    table = _load_table(args.dataset, args.split)
    if args.prompt_column not in table.column_names:
        raise ValueError(f"dataset has no column {args.prompt_column!r}; its columns are {table.column_names}")
    if args.max_samples is not None:
        table = table.select(range(min(args.max_samples, len(table))))
    lengths = predict_length(
        critic, tokenizer, table[args.prompt_column], args.batch_size, None if args.chat_template else False
    )
    table = table.add_column("predicted_length", [float(x) for x in lengths])
    table = table.add_column("predicted_value", [float(x) for x in length_to_value(lengths.double(), gamma)])
    summary = f"{len(table)} prompts, mean predicted length {float(lengths.mean()):.1f} tokens (value space, γ={gamma})"
    if args.lengths_column is not None:
        if args.lengths_column not in table.column_names:
            raise ValueError(f"dataset has no column {args.lengths_column!r}; its columns are {table.column_names}")
        truths = [
            float(value_space_length(torch.tensor([row] if isinstance(row, (int, float)) else row), gamma))
            for row in table[args.lengths_column]
        ]
        errors = [abs(float(p) - t) / max(t, 1e-9) for p, t in zip(lengths, truths, strict=True)]
        table = table.add_column("value_space_length", truths).add_column("relative_error", errors)
        summary += f"; MRE vs value-space ground truth {100 * sum(errors) / len(errors):.1f}%"
    _write_table(table, args.output_file)
    print(summary)
    print(f"predictions written to {args.output_file}")


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


def _eval_length_control_cli(args: EvalLengthControlArguments) -> None:
    from transformers import AutoModelForCausalLM

    from .io import write_text_atomically
    from .modeling import LengthValueModel

    constraints = parse_constraints(args.constraints)
    if args.num_prompts < 1 or args.samples_per_prompt < 1:
        raise ValueError("num_prompts and samples_per_prompt must be ≥ 1")
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    tokenizer = _load_tokenizer(args.tokenizer, [args.policy])
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype).to(device).eval()
    critic = LengthValueModel.from_pretrained(args.critic, dtype=dtype).to(device).eval()
    if args.prompts_file is not None:
        table = _load_table(args.prompts_file)
        if args.prompt_column not in table.column_names:
            raise ValueError(f"prompts file has no column {args.prompt_column!r}; columns: {table.column_names}")
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


register("predict-length", PredictLengthArguments.__doc__, (PredictLengthArguments,), _predict_length_cli)
register(
    "eval-length-control", EvalLengthControlArguments.__doc__, (EvalLengthControlArguments,), _eval_length_control_cli
)
