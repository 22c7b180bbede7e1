"""The built-in concise-reasoning tasks: sums of digit lists, verifiable exactly, where reasoning length trades
against accuracy.

**Checked sums** (the length-method study's task, :func:`format_completion`): a completion is built from two
decisions, one of them taken in the middle of it::

    [trace " "] "=" answer [" check " t1 "+" t2 ... "=" answer] EOS

The *trace* (running sums, decided at the first token) pays off on long lists only; the *check* after the answer
(decided once the answer is written) never changes it — the reward reads the first standalone ``=N`` — so it is pure
waste on every prompt. :func:`warmup_probabilities` gives the prompt-dependent rates at which the warm-up data uses
each, and :func:`ideal_completion` the policy that reasons only where it pays and never checks.

**Plain sums** (the original demo task):

A prompt is ``"add 3 5 7 2"``; the answer is the sum. A *terse* completion states it directly (``"=17"``); a
*verbose* one writes the running sums first (``"3+5=8 8+7=15 15+2=17 =17"``). For a small model, two digits are
easy to add at once, while a long list is hard to add without the running sums: the trace helps on hard prompts and
is wasted on easy ones. Difficulty is the number of terms.

Everything is generated here (no download): :func:`make_problems` draws problems, :func:`format_trace` writes the
two styles, :func:`parse_answer` / :func:`arithmetic_correctness` check completions.
"""

from __future__ import annotations

import random
import re
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
    "checked_sum_correctness",
    "completion_structure",
    "warmup_probabilities",
    "ideal_completion",
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


def make_problems(count: int, min_terms: int = 2, max_terms: int = 6, seed: int = 0) -> list[Problem]:
    """``count`` problems with a uniform number of terms in ``[min_terms, max_terms]`` and digits 1–9."""
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 ≤ min_terms ≤ max_terms, got {min_terms}, {max_terms}")
    rng = random.Random(seed)
    return [Problem(tuple(rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))))
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


# ---------------------------------------------------------------------------------------------------- checked sums

_FIRST_ANSWER = re.compile(r"(?:^|\s)=(-?\d+)(?=\s|$)")
# Two digits are easy to add at once; from three terms on, writing the running sums is what keeps a small model right.
TRACE_PAYS_FROM = 3


def format_completion(problem: Problem, trace: bool, check: bool) -> str:
    """A checked-sums completion (without EOS): ``[trace " "] "=" answer [" check " terms "=" answer]``.

    ``format_completion(Problem((3, 5, 7)), True, True) == "3+5=8 8+7=15 =15 check 3+5+7=15"``.
    """
    text = f"={problem.answer}"
    if trace:
        text = format_trace(problem, verbose=True)
    if check:
        text += " check " + "+".join(str(t) for t in problem.terms) + f"={problem.answer}"
    return text


def first_answer(completion: Any) -> int | None:
    """The answer of a checked-sums completion: the integer of the first standalone ``=N`` (``=`` at the start or
    after whitespace, ``N`` followed by whitespace or the end). Trace steps (``3+5=8``) and a check after the answer
    never count. ``None`` if there is none."""
    if not isinstance(completion, str):
        return None
    match = _FIRST_ANSWER.search(completion)
    return int(match.group(1)) if match else None


def checked_sum_correctness(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward function of the checked-sums task: 1.0 when :func:`first_answer` equals the ``answer`` column,
    else 0.0. Whatever follows the answer (a check, or junk) cannot change the reward."""
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        parsed = first_answer(_completion_text(completion))
        rewards.append(1.0 if parsed is not None and parsed == int(expected) else 0.0)
    return rewards


def completion_structure(completion: Any) -> dict[str, bool]:
    """Which segments a checked-sums completion holds: ``{"trace": ..., "check": ...}`` (a trace is any ``a+b=c``
    before the answer; a check is the word ``check`` after it)."""
    text = _completion_text(completion)
    match = _FIRST_ANSWER.search(text)
    before, after = (text[: match.start()], text[match.end():]) if match else (text, "")
    return {"trace": bool(re.search(r"\d\+\d", before)), "check": "check" in after}


def warmup_probabilities(problem: Problem) -> dict[str, float]:
    """How often the warm-up data writes each segment for ``problem``: the trace more often on longer lists
    (``0.25 + 0.1 (d - 2)``, from 0.25 at two terms to 0.65 at six: wasted on short lists, too rare on long ones), the
    check at a rate set by the first term's parity (0.6 odd, 0.2 even), unrelated to difficulty."""
    return {"trace": 0.25 + 0.1 * (problem.difficulty - 2), "check": 0.6 if problem.terms[0] % 2 else 0.2}


def ideal_completion(problem: Problem) -> str:
    """What a policy that reasons only where it pays and never checks writes: the trace from
    :data:`TRACE_PAYS_FROM` terms on, never the check."""
    return format_completion(problem, trace=problem.difficulty >= TRACE_PAYS_FROM, check=False)


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
    "checked_sum_correctness": checked_sum_correctness,
    "gsm8k_correctness": gsm8k_correctness,
}
