"""Plain sampling's warpers in one logits processor, with a nucleus that avoids sorting the vocabulary.

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

import torch
from torch import Tensor

__all__ = ["SamplingWarper"]


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
