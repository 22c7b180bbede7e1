"""The built-in concise-reasoning tasks: sums of digit lists, verifiable exactly, where reasoning length trades
against accuracy.

**Checked parity** (the length-method study's task, :func:`format_completion`): the parity of a bit string,
``parity 10110`` (three ones: 1). A completion is built from two decisions, one of them taken in the middle of it::

    [reduction " "] "=" answer [" check " bits] EOS

The *reduction* (decided at the first token) replaces the first two bits by their parity and copies the rest, step
by step — ``1110 010 10 1`` — so every step is a four-entry table look-up and a copy, which a small model does
reliably, while the answer at once needs the parity of the whole string in one forward pass, which transformers are
notoriously bad at: the trace pays off on long strings only. The *check* after the answer (decided once the answer is
written) restates the input and never changes the answer — the reward reads the first standalone ``=x`` — so it is
pure waste on every prompt. :func:`warmup_probabilities` gives the prompt-dependent rates at which the warm-up data
uses each, and :func:`ideal_completion` the policy that reasons only where it pays and never checks.

**Plain sums** (the original demo task):

A prompt is ``"add 3 5 7 2"``; the answer is the sum. A *terse* completion states it directly (``"=17"``); a
*verbose* one writes the running sums first (``"3+5=8 8+7=15 15+2=17 =17"``). For a small model, two digits are
easy to add at once, while a long list is hard to add without the running sums: the trace helps on hard prompts and
is wasted on easy ones. Difficulty is the number of terms.

Everything is generated here (no download): :func:`make_problems` draws problems, :func:`format_trace` writes the
two styles, :func:`parse_answer` / :func:`arithmetic_correctness` check completions.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Problem",
    "make_problems",
    "format_prompt",
    "format_trace",
    "format_completion",
    "parse_answer",
    "first_answer",
    "arithmetic_correctness",
    "Bits",
    "make_bits",
    "format_parity_prompt",
    "format_reduction",
    "checked_parity_correctness",
    "completion_structure",
    "warmup_probabilities",
    "ideal_completion",
    "expected_remaining",
    "parse_prompt",
    "TRACE_PAYS_FROM",
    "gsm8k_correctness",
    "REWARD_FUNCTIONS",
]

_ANSWER = re.compile(r"=(-?\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    """A list of digits to add; ``difficulty`` is the number of terms."""

    terms: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.terms)

    @property
    def difficulty(self) -> int:
        return len(self.terms)


def make_problems(count: int, min_terms: int = 2, max_terms: int = 6, seed: int = 0, low: int = 1,
                  high: int = 9) -> list[Problem]:
    """``count`` problems with a uniform number of terms in ``[min_terms, max_terms]`` and terms uniform in
    ``[low, high]`` (digits 1–9 by default)."""
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 ≤ min_terms ≤ max_terms, got {min_terms}, {max_terms}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 ≤ low ≤ high, got {low}, {high}")
    rng = random.Random(seed)
    return [Problem(tuple(rng.randint(low, high) for _ in range(rng.randint(min_terms, max_terms))))
            for _ in range(count)]


def format_prompt(problem: Problem) -> str:
    """The user prompt, e.g. ``"add 3 5 7"``."""
    return "add " + " ".join(str(t) for t in problem.terms)


def format_trace(problem: Problem, verbose: bool) -> str:
    """The completion text (without EOS): ``"=17"`` (terse) or the running sums then ``"=17"`` (verbose)."""
    if not verbose:
        return f"={problem.answer}"
    steps, total = [], problem.terms[0]
    for term in problem.terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return " ".join(steps) + f" ={problem.answer}"


def parse_answer(completion: str) -> int | None:
    """The final answer of a completion: the integer after the last ``=`` at the very end; ``None`` if malformed
    or empty."""
    if not isinstance(completion, str):
        return None
    match = _ANSWER.search(completion.strip())
    return int(match.group(1)) if match else None


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(message.get("content", "") for message in completion if isinstance(message, dict))
    return str(completion)


def arithmetic_correctness(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 when the completion's final answer equals the dataset's ``answer`` column, else 0.0
    (wrong, malformed and empty answers all score 0)."""
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        parsed = parse_answer(_completion_text(completion))
        rewards.append(1.0 if parsed is not None and parsed == int(expected) else 0.0)
    return rewards


# ---------------------------------------------------------------------------------------------------- checked parity

_FIRST_ANSWER = re.compile(r"(?:^|\s)=(\S+)(?=\s|$)")
# From TRACE_PAYS_FROM bits on, the reduction is what keeps a small model right (parity is notoriously hard for a
# transformer to compute in one forward pass): the study's warm-up policy answers 2–3 bits at once without error,
# gains 2 points from the reduction at 4 bits and 12–45 points from 5 to 8 (its report's forced-decision table).
TRACE_PAYS_FROM = 4


@dataclass(frozen=True)
class Bits:
    """A bit string whose parity is asked for; ``difficulty`` is its length."""

    bits: str

    @property
    def answer(self) -> str:
        return str(self.bits.count("1") % 2)

    @property
    def difficulty(self) -> int:
        return len(self.bits)


def make_bits(count: int, seed: int = 0, min_bits: int = 2, max_bits: int = 8) -> list[Bits]:
    """``count`` uniform random bit strings with a length uniform in ``[min_bits, max_bits]``."""
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    if not 2 <= min_bits <= max_bits:
        raise ValueError(f"need 2 ≤ min_bits ≤ max_bits, got {min_bits}, {max_bits}")
    rng = random.Random(seed)
    return [Bits("".join(rng.choice("01") for _ in range(rng.randint(min_bits, max_bits)))) for _ in range(count)]


def format_parity_prompt(problem: Bits) -> str:
    """The user prompt, e.g. ``"parity 10110"``."""
    return f"parity {problem.bits}"


def format_reduction(problem: Bits) -> str:
    """The trace: the string reduced one step at a time — the first two bits replaced by their parity, the rest
    copied — ``"1110 010 10 1"`` for ``10110``."""
    bits, steps = problem.bits, []
    while len(bits) > 1:
        bits = str(int(bits[0]) ^ int(bits[1])) + bits[2:]
        steps.append(bits)
    return " ".join(steps)


def format_completion(problem: Bits, trace: bool, check: bool) -> str:
    """A checked-parity completion (without EOS): ``[reduction " "] "=" answer [" check " bits]``.

    For ``parity 10110``: ``"1110 010 10 1 =1 check 10110"`` with both segments, ``"=1"`` with none.
    """
    text = f"={problem.answer}"
    if trace:
        text = f"{format_reduction(problem)} {text}"
    if check:
        text += f" check {problem.bits}"
    return text


def first_answer(completion: Any) -> str | None:
    """The answer of a checked-parity completion: the token after the first standalone ``=`` (``=`` at the start or
    after whitespace). The trace and a check after the answer never count. ``None`` if there is none."""
    if not isinstance(completion, str):
        return None
    match = _FIRST_ANSWER.search(completion)
    return match.group(1) if match else None


def checked_parity_correctness(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward function of the checked-parity task: 1.0 when :func:`first_answer` equals the ``answer`` column,
    else 0.0. Whatever follows the answer (a check, or junk) cannot change the reward."""
    return [1.0 if first_answer(_completion_text(c)) == str(expected) else 0.0
            for c, expected in zip(completions, answer, strict=True)]


def completion_structure(completion: Any) -> dict[str, bool]:
    """Which segments a checked-parity completion holds: ``{"trace": ..., "check": ...}`` (a trace is any text
    before the answer; a check is the word ``check`` after it)."""
    text = _completion_text(completion)
    match = _FIRST_ANSWER.search(text)
    before, after = (text[: match.start()], text[match.end():]) if match else (text, "")
    return {"trace": bool(before.strip()), "check": "check" in after}


def warmup_probabilities(problem: Bits) -> dict[str, float]:
    """How often the warm-up data writes each segment: the trace more often for longer strings (``0.25 + 0.4 (n - 2)
    / 6``, 0.25 at two bits to 0.65 at eight: wasted on short strings, too rare on long ones), the check at a rate set
    by the first bit (0.6 for 1, 0.2 for 0), unrelated to difficulty."""
    return {"trace": 0.25 + 0.4 * (problem.difficulty - 2) / 6, "check": 0.6 if problem.bits[0] == "1" else 0.2}


def ideal_completion(problem: Bits) -> str:
    """What a policy that reasons only where it pays and never checks writes: the reduction from
    :data:`TRACE_PAYS_FROM` bits on, never the check."""
    return format_completion(problem, trace=problem.difficulty >= TRACE_PAYS_FROM, check=False)


def parse_prompt(prompt: Any) -> Bits:
    """The :class:`Bits` of a prompt ``"parity 10110"`` (a string or a one-message chat list)."""
    text = prompt[0]["content"] if isinstance(prompt, list) else str(prompt)
    words = text.split()
    if len(words) != 2 or words[0] != "parity" or len(words[1]) < 2 or set(words[1]) - {"0", "1"}:
        raise ValueError(f"not a parity prompt (expected 'parity 0110...'): {text!r}")
    return Bits(words[1])


def expected_remaining(problem: Bits, prefix: str, length: Callable[[str], int], gamma: float) -> float | None:
    """The warm-up policy's value-space expected remaining length (tokens, EOS counted) after ``prefix`` of a
    checked-parity completion — what an oracle critic of that policy predicts at the two decisions: before the first
    token (trace or not, check or not) and right after the answer (check or stop). ``length(text)`` counts tokens.
    Returns ``ln(E[γ^R]) / ln γ`` over the completions the warm-up data writes that start with ``prefix`` (weighted by
    :func:`warmup_probabilities`), or ``None`` when none does."""
    rates = warmup_probabilities(problem)
    expectation, total = 0.0, 0.0
    for trace in (False, True):
        for check in (False, True):
            weight = ((rates["trace"] if trace else 1 - rates["trace"])
                      * (rates["check"] if check else 1 - rates["check"]))
            text = format_completion(problem, trace, check)
            if not text.startswith(prefix):
                continue
            remaining = length(text[len(prefix):]) + 1 if len(text) > len(prefix) else 1
            expectation += weight * gamma ** remaining
            total += weight
    if total == 0.0:
        return None
    return math.log(expectation / total) / math.log(gamma)


# ---------------------------------------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip().rstrip("."))
    except ValueError:
        return None


def gsm8k_correctness(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """TRL reward function for GSM8K: 1.0 when the completion's final number (the last ``\\boxed{...}`` if any,
    else the last number) equals the number after ``####`` in the dataset's ``answer`` column, else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        expected = _to_number(str(reference).split("####")[-1])
        text = _completion_text(completion)
        boxed = _BOXED.findall(text)
        numbers = _NUMBER.findall(boxed[-1] if boxed else text)
        got = _to_number(numbers[-1]) if numbers else None
        rewards.append(1.0 if got is not None and expected is not None and abs(got - expected) < 1e-6 else 0.0)
    return rewards


REWARD_FUNCTIONS = {
    "arithmetic_correctness": arithmetic_correctness,
    "checked_parity_correctness": checked_parity_correctness,
    "gsm8k_correctness": gsm8k_correctness,
}
