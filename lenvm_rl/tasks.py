"""The built-in concise-reasoning tasks: sums of digit lists, verifiable exactly, where reasoning length trades
against accuracy.

**Checked chains** (the length-method study's task, :func:`format_completion`): a prompt is a chain of operations
modulo 7 applied left to right, ``calc 3 +5 *2 +4`` (= ((3 + 5)·2 + 4) mod 7 = 6). A completion is built from two
decisions, one of them taken in the middle of it::

    [trace " "] "=" answer [" check " chain "=" answer] EOS

The *trace* (decided at the first token) reduces the chain one operation at a time — apply the first operation,
copy the rest: ``1 *2 +4, 2 +4, 6`` — so that every step is one table look-up a small model gets right, while the
answer at once needs the whole non-commutative composition in one forward pass: the trace pays off on long chains
only. The *check* after the answer (decided once the answer is written) never changes it — the reward reads the
first standalone ``=N`` — so it is pure waste on every prompt. :func:`warmup_probabilities` gives the
prompt-dependent rates at which the warm-up data uses each, and :func:`ideal_completion` the policy that reasons
only where it pays and never checks.

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
    "format_reduction",
    "parse_answer",
    "first_answer",
    "arithmetic_correctness",
    "Chain",
    "MODULUS",
    "make_chains",
    "format_chain_prompt",
    "checked_chain_correctness",
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


# ---------------------------------------------------------------------------------------------------- checked chains

_FIRST_ANSWER = re.compile(r"(?:^|\s)=(-?\d+)(?=\s|$)")
MODULUS = 7
# One operation is easy to apply at once; from two on, writing the reduction is what keeps a small model right.
TRACE_PAYS_FROM = 3


@dataclass(frozen=True)
class Chain:
    """A start value and operations ``("+", k)`` / ``("*", k)`` applied left to right modulo :data:`MODULUS`;
    ``difficulty`` is the number of terms (operations + 1)."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def answer(self) -> int:
        value = self.start
        for op, k in self.ops:
            value = (value + k if op == "+" else value * k) % MODULUS
        return value

    @property
    def difficulty(self) -> int:
        return len(self.ops) + 1


def make_chains(count: int, seed: int = 0, min_terms: int = 2, max_terms: int = 6) -> list[Chain]:
    """``count`` chains with a uniform number of terms in ``[min_terms, max_terms]``: a start in 0–6, then ``+k``
    (k in 1–6) or ``*k`` (k in 2–6) with equal odds; every operation is invertible modulo 7, so no chain collapses
    to a constant answer."""
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 ≤ min_terms ≤ max_terms, got {min_terms}, {max_terms}")
    rng = random.Random(seed)
    chains = []
    for _ in range(count):
        ops = tuple(("+", rng.randint(1, 6)) if rng.random() < 0.5 else ("*", rng.randint(2, 6))
                    for _ in range(rng.randint(min_terms, max_terms) - 1))
        chains.append(Chain(rng.randint(0, MODULUS - 1), ops))
    return chains


def _ops_text(ops: tuple[tuple[str, int], ...], sep: str = " ") -> str:
    return sep.join(f"{op}{k}" for op, k in ops)


def format_chain_prompt(chain: Chain) -> str:
    """The user prompt, e.g. ``"calc 3 +5 *2 +4"``."""
    return f"calc {chain.start} {_ops_text(chain.ops)}"


def format_reduction(chain: Chain) -> str:
    """The trace: the chain reduced one operation at a time, ``"1 *2 +4, 2 +4, 6"`` for ``calc 3 +5 *2 +4``."""
    value, steps = chain.start, []
    for index, (op, k) in enumerate(chain.ops):
        value = (value + k if op == "+" else value * k) % MODULUS
        rest = chain.ops[index + 1:]
        steps.append(f"{value} {_ops_text(rest)}".strip())
    return ", ".join(steps)


def format_completion(chain: Chain, trace: bool, check: bool) -> str:
    """A checked-chains completion (without EOS): ``[trace " "] "=" answer [" check " chain "=" answer]``.

    ``format_completion(Chain(3, (("+", 5), ("*", 2))), True, True) == "1 *2, 2 =2 check 3+5*2=2"``.
    """
    text = f"={chain.answer}"
    if trace:
        text = f"{format_reduction(chain)} {text}"
    if check:
        text += f" check {chain.start}{_ops_text(chain.ops, '')}={chain.answer}"
    return text


def first_answer(completion: Any) -> int | None:
    """The answer of a checked-chains completion: the integer of the first standalone ``=N`` (``=`` at the start or
    after whitespace, ``N`` followed by whitespace or the end). The trace and a check after the answer never count.
    ``None`` if there is none."""
    if not isinstance(completion, str):
        return None
    match = _FIRST_ANSWER.search(completion)
    return int(match.group(1)) if match else None


def checked_chain_correctness(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward function of the checked-chains task: 1.0 when :func:`first_answer` equals the ``answer`` column,
    else 0.0. Whatever follows the answer (a check, or junk) cannot change the reward."""
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        parsed = first_answer(_completion_text(completion))
        rewards.append(1.0 if parsed is not None and parsed == int(expected) else 0.0)
    return rewards


def completion_structure(completion: Any) -> dict[str, bool]:
    """Which segments a checked-chains completion holds: ``{"trace": ..., "check": ...}`` (a trace is any digit
    before the answer; a check is the word ``check`` after it)."""
    text = _completion_text(completion)
    match = _FIRST_ANSWER.search(text)
    before, after = (text[: match.start()], text[match.end():]) if match else (text, "")
    return {"trace": bool(re.search(r"\d", before)), "check": "check" in after}


def warmup_probabilities(chain: Chain) -> dict[str, float]:
    """How often the warm-up data writes each segment for ``chain``: the trace more often on longer chains
    (``0.25 + 0.1 (d - 2)``, from 0.25 at two terms to 0.65 at six: wasted on short chains, too rare on long ones),
    the check at a rate set by the start's parity (0.6 odd, 0.2 even), unrelated to difficulty."""
    return {"trace": 0.25 + 0.1 * (chain.difficulty - 2), "check": 0.6 if chain.start % 2 else 0.2}


def ideal_completion(chain: Chain) -> str:
    """What a policy that reasons only where it pays and never checks writes: the trace from
    :data:`TRACE_PAYS_FROM` terms on, never the check."""
    return format_completion(chain, trace=chain.difficulty >= TRACE_PAYS_FROM, check=False)


def parse_prompt(prompt: Any) -> Chain:
    """The :class:`Chain` of a prompt ``"calc 3 +5 *2"`` (a string or a one-message chat list)."""
    text = prompt[0]["content"] if isinstance(prompt, list) else str(prompt)
    words = text.split()
    ops = []
    for word in words[2:]:
        if len(word) < 2 or word[0] not in "+*" or not word[1:].isdigit():
            ops = None
            break
        ops.append((word[0], int(word[1:])))
    if len(words) < 3 or words[0] != "calc" or not words[1].isdigit() or ops is None:
        raise ValueError(f"not a chain prompt (expected 'calc s +k *k ...'): {text!r}")
    return Chain(int(words[1]), tuple(ops))


def expected_remaining(chain: Chain, prefix: str, length: Callable[[str], int], gamma: float) -> float | None:
    """The warm-up policy's value-space expected remaining length (tokens, EOS counted) after ``prefix`` of a
    checked-chains completion — what an oracle critic of that policy predicts at the two decisions: before the first
    token (trace or not, check or not) and right after the answer (check or stop). ``length(text)`` counts tokens.
    Returns ``ln(E[γ^R]) / ln γ`` over the completions the warm-up data writes that start with ``prefix`` (weighted by
    :func:`warmup_probabilities`), or ``None`` when none does."""
    rates = warmup_probabilities(chain)
    expectation, total = 0.0, 0.0
    for trace in (False, True):
        for check in (False, True):
            weight = ((rates["trace"] if trace else 1 - rates["trace"])
                      * (rates["check"] if check else 1 - rates["check"]))
            text = format_completion(chain, trace, check)
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
    "checked_chain_correctness": checked_chain_correctness,
    "gsm8k_correctness": gsm8k_correctness,
}
