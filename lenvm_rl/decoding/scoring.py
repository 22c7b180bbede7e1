"""Candidate scoring for value-guided decoding: the critic's value ``V(s_t ⊕ x)`` of each candidate next token.

**Cached one-pass scoring.** :class:`CachedCandidateScorer` keeps the critic's own KV cache of every row's prefix.
Each step it runs *one* critic forward over ``[new prefix tokens ; x_1 … x_k]``: the new tokens attend causally to
the cached prefix, each candidate attends to the prefix and to itself only (a 4-D additive attention mask), all
candidates get the next position id; then the ``k`` candidate entries are cropped from the cache. Batched over
left-padded rows; finished rows are masked. :func:`score_candidates_uncached` is the reference that re-runs the
critic over the full prefix for every candidate.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..length_math import check_gamma

__all__ = [
    "CachedCandidateScorer",
    "UncachedCandidateScorer",
    "check_vocabulary",
    "score_candidates_uncached",
]

# Attention implementations that take a custom 4-D additive mask as-is (transformers' masking_utils returns an
# already-4-D mask unchanged and sdpa/eager add it to the scores); flash attention only knows padding masks.
_MASKABLE_ATTENTION = ("sdpa", "eager")


def _as_id_list(ids: int | Sequence[int] | Tensor | None) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


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


class UncachedCandidateScorer:
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
