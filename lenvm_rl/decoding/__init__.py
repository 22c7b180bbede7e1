"""Inference uses of a LenVM critic: value-guided decoding (tilting, hard length targets), candidate scoring,
prompt-boundary length prediction and the LIFEBench length-instruction metrics."""

from ..sampling import SamplingWarper
from .guided import LengthGuidedLogitsProcessor, LengthTarget, generated_lengths, guided_generate
from .length_score import (
    CONSTRAINT_TYPES,
    check_constraint,
    length_deviation,
    length_score,
    parse_constraints,
    summarize_length_control,
)
from .prediction import predict_length, tokenize_prompts
from .scoring import CachedCandidateScorer, UncachedCandidateScorer, check_vocabulary, score_candidates_uncached

__all__ = [
    "CONSTRAINT_TYPES",
    "CachedCandidateScorer",
    "LengthGuidedLogitsProcessor",
    "LengthTarget",
    "SamplingWarper",
    "UncachedCandidateScorer",
    "check_constraint",
    "check_vocabulary",
    "generated_lengths",
    "guided_generate",
    "length_deviation",
    "length_score",
    "parse_constraints",
    "predict_length",
    "score_candidates_uncached",
    "summarize_length_control",
    "tokenize_prompts",
]
