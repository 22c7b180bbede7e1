"""Multi parity: the long task with many decisions. Several checked-parity problems in one prompt, answered in turn.

A prompt holds 3–5 keyed bit strings of 2–8 bits, ``parities a:10110 b:011 c:1101001``; the completion answers
each in turn, parts joined by ``" ; "``, each part restating its key and string and then taking checked parity's two
decisions::

    part_i = key_i ":" bits_i " " [reduction(bits_i) " "] "=" parity(bits_i) [" check " bits_i]

    a:10110 1110 010 10 1 =1 check 10110 ; b:011 =0 ; c:1101001 011001 11001 0001 001 01 1 =0

(The keys are what let a small model find string ``i`` in the prompt: with bare strings a 4-layer warm-up policy
restated the second and later strings right only 1–5% of the time, counting strings by position being beyond it.)

So a completion runs 20–300 tokens (about 110 at the warm-up policy's rates, characters are tokens with the tiny
tokenizer) and holds 6–10 decisions at different positions: a reduction trace per part that pays only on the long
strings (from :data:`~lenvm_rl.tasks.TRACE_PAYS_FROM` bits on, as in checked parity) and a check after each answer
that never pays, mid-completion as often as at the end. The reward is 1 only when every part restates its string
and answers it right (:func:`multi_parity_correctness`), so one wrong part fails the whole completion: the sequence
reward says *that* something failed, not which part, which is the credit-assignment problem that per-token task
credit is built for. The warm-up policy takes each decision at checked parity's rates
(:func:`lenvm_rl.tasks.warmup_probabilities`, independently per part); the ideal policy traces exactly the long
strings and never checks, and its length is computed exactly.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...tasks import TRACE_PAYS_FROM, Bits, _completion_text, format_reduction, warmup_probabilities
from . import DecisionEvaluator, StudyTask, register_task

__all__ = ["MultiParity", "Strings", "make_strings", "format_prompt", "header", "format_part", "format_completion",
           "parse_prompt", "split_parts", "multi_parity_correctness", "first_part_correctness"]

SEPARATOR = " ; "
KEYS = "abcde"
_ANSWER = re.compile(r"(?:^|\s)=(\S+)(?=\s|$)")
MIN_PARTS, MAX_PARTS = 3, 5
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class Strings:
    """The bit strings of one prompt; ``answer`` is their parities in order, ``difficulty`` how many are long enough
    for the trace to pay."""

    parts: tuple[Bits, ...]

    @property
    def answer(self) -> str:
        return "".join(part.answer for part in self.parts)

    @property
    def difficulty(self) -> int:
        return sum(part.difficulty >= TRACE_PAYS_FROM for part in self.parts)


def make_strings(count: int, seed: int = 0) -> list[Strings]:
    """``count`` prompts of 3–5 uniform random bit strings, each 2–8 bits long (lengths uniform)."""
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    rng = random.Random(seed)
    return [Strings(tuple(Bits("".join(rng.choice("01") for _ in range(rng.randint(MIN_BITS, MAX_BITS))))
                          for _ in range(rng.randint(MIN_PARTS, MAX_PARTS)))) for _ in range(count)]


def format_prompt(problem: Strings) -> str:
    """``"parities a:10110 b:011 c:1101001"``."""
    return "parities " + " ".join(header(index, part) for index, part in enumerate(problem.parts))


def header(index: int, part: Bits) -> str:
    """What part ``index`` starts with (and the prompt names it by): ``"b:011"``."""
    return f"{KEYS[index]}:{part.bits}"


def format_part(index: int, part: Bits, trace: bool, check: bool) -> str:
    """Part ``index``: ``key ":" bits " " [reduction " "] "=" parity [" check " bits]``."""
    text = f"{header(index, part)} " + (f"{format_reduction(part)} " if trace else "") + f"={part.answer}"
    return text + (f" check {part.bits}" if check else "")


def format_completion(problem: Strings, traces: Sequence[bool], checks: Sequence[bool]) -> str:
    """The parts joined by ``" ; "`` (no EOS), with the trace and check decisions given per part."""
    return SEPARATOR.join(format_part(index, part, trace, check)
                          for index, (part, trace, check) in enumerate(zip(problem.parts, traces, checks,
                                                                           strict=True)))


def parse_prompt(prompt: Any) -> Strings:
    """The :class:`Strings` of ``"parities a:10110 b:011"`` (a string or a one-message chat list)."""
    text = prompt[0]["content"] if isinstance(prompt, list) else str(prompt)
    words = text.split()
    keys = [w.partition(":")[0] for w in words[1:]]
    strings = [w.partition(":")[2] for w in words[1:]]
    if (len(words) < 2 or words[0] != "parities" or len(words) - 1 > len(KEYS) or keys != list(KEYS[: len(keys)])
            or any(len(b) < 2 or set(b) - {"0", "1"} for b in strings)):
        raise ValueError(f"not a multi-parity prompt (expected 'parities a:0110 b:101 ...'): {text!r}")
    return Strings(tuple(Bits(bits) for bits in strings))


def _header_bits(text: str) -> str | None:
    """The bit string of a part header ``"b:011"`` (``None`` if it is not one)."""
    key, colon, bits = text.partition(":")
    return bits if colon and len(key) == 1 and len(bits) >= 2 and not set(bits) - {"0", "1"} else None


def split_parts(completion: str) -> list[tuple[int, str, str | None, str, str]]:
    """``(start offset, header, answer, text before the answer, text after it)`` of every part of ``completion``
    (``answer`` is ``None`` for a part without one; the header is the part's first word, ``"b:011"``)."""
    parts, offset = [], 0
    for piece in completion.split(SEPARATOR):
        header, space, body = piece.partition(" ")
        if _header_bits(header) is None:
            header, body = "", piece
        match = _ANSWER.search(body)
        before, after = (body[: match.start()], body[match.end():]) if match else (body, "")
        parts.append((offset, header, match.group(1) if match else None, before, after))
        offset += len(piece) + len(SEPARATOR)
    return parts


def _parts_correct(completion: Any, answer: str) -> list[bool]:
    found = split_parts(_completion_text(completion))
    return [index < len(found) and found[index][2] == expected for index, expected in enumerate(str(answer))]


def multi_parity_correctness(completions: list[Any], answer: list[Any], prompts: list[Any] | None = None,
                             **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 when part ``i`` of the completion restates string ``i`` of the prompt and its first
    standalone ``=x`` is that string's parity, for every string (``answer`` column: the parities in order, e.g.
    ``"101"``); else 0.0. Text after the last part (or a check) cannot change the reward."""
    rewards = []
    for index, (completion, expected) in enumerate(zip(completions, answer, strict=True)):
        ok = all(_parts_correct(completion, expected))
        if ok and prompts is not None:
            headers = [part[1] for part in split_parts(_completion_text(completion))]
            wanted = [header(i, part) for i, part in enumerate(parse_prompt(prompts[index]).parts)]
            ok = headers[: len(wanted)] == wanted
        rewards.append(1.0 if ok else 0.0)
    return rewards


def first_part_correctness(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """Whether the first part is answered right (the forced-decision diagnostic forces that part's trace)."""
    return [float(_parts_correct(c, str(a)[:1])[0]) for c, a in zip(completions, answer, strict=True)]


@register_task
class MultiParity(StudyTask):
    name = "multi_parity"
    reward_func = "lenvm_rl.study.tasks.multi_parity:multi_parity_correctness"
    warmup_max_length = 448
    segments = {"trace_long": f"fraction of parts with ≥ {TRACE_PAYS_FROM} bits (where the trace pays) that are traced",
                "trace_short": f"fraction of parts under {TRACE_PAYS_FROM} bits (where it is waste) that are traced",
                "check": "fraction of parts with a check (always waste)"}
    ideal_note = (f"the policy that traces exactly the parts of ≥ {TRACE_PAYS_FROM} bits, never checks, and is always "
                  "right; columns d=k: mean tokens on prompts with k such parts")

    def rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        return [{"prompt": [{"role": "user", "content": format_prompt(p)}], "answer": p.answer,
                 "difficulty": p.difficulty} for p in make_strings(count, seed=seed)]

    def warmup_rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        rows = []
        for problem in make_strings(count, seed=seed):
            rates = [warmup_probabilities(part) for part in problem.parts]
            traces = [rng.random() < r["trace"] for r in rates]
            checks = [rng.random() < r["check"] for r in rates]
            rows.append({"prompt": [{"role": "user", "content": format_prompt(problem)}],
                         "completion": [{"role": "assistant", "content": format_completion(problem, traces, checks)}]})
        return rows

    def structure(self, completion: str) -> dict[str, float]:
        counts = {"trace_long": [0, 0], "trace_short": [0, 0], "check": [0, 0]}
        for _, start, answer, before, after in split_parts(completion):
            bits = _header_bits(start)
            if answer is None or bits is None:
                continue
            key = "trace_long" if len(bits) >= TRACE_PAYS_FROM else "trace_short"
            counts[key][0] += bool(before.strip())
            counts[key][1] += 1
            counts["check"][0] += "check" in after
            counts["check"][1] += 1
        return {key: hits / total if total else math.nan for key, (hits, total) in counts.items()}

    def ideal_completion(self, row: dict[str, Any]) -> str:
        problem = parse_prompt(row["prompt"])
        return format_completion(problem, [p.difficulty >= TRACE_PAYS_FROM for p in problem.parts],
                                 [False] * len(problem.parts))

    def ideal_structure(self) -> dict[str, float]:
        return {"trace_long": 1.0, "trace_short": 0.0, "check": 0.0}

    def forced_decisions(self, evaluate: DecisionEvaluator, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        def first(row: dict[str, Any]) -> Bits:
            return parse_prompt(row["prompt"]).parts[0]

        direct = evaluate(lambda row: f"{header(0, first(row))} =", first_part_correctness)
        traced = evaluate(lambda row: f"{header(0, first(row))} {format_reduction(first(row))[0]}",
                          first_part_correctness)
        return {"level_name": "bits of the first string (its part's accuracy)",
                "level": [first(row).difficulty for row in rows],
                "direct_correct": direct["correct"].tolist(), "direct_tokens": direct["tokens"].tolist(),
                "trace_correct": traced["correct"].tolist(), "trace_tokens": traced["tokens"].tolist()}

    def decision_states(self, prompt: str, completion: str) -> list[tuple[str, str]]:
        states = [("first token", "")]
        for offset, _, answer, before, _ in split_parts(completion):
            if answer is not None:
                end = completion.find(f"={answer}", offset + len(before)) + 1 + len(answer)
                states.append(("after an answer", completion[:end]))
        return states

    def expected_remaining(self, prompt: str, prefix: str, length: Callable[[str], int], gamma: float
                           ) -> float | None:
        """Exact for the warm-up policy at the first token and right after any part's answer: the parts' decisions
        are independent, so ``E[γ^R]`` is ``γ`` (EOS) times the product of each remaining piece's ``E[γ^len]``."""
        try:
            problem = parse_prompt(prompt.strip())
        except ValueError:
            return None
        expectation = gamma  # the EOS token
        if prefix == "":
            done = 0
        else:
            parts = split_parts(prefix)
            done = len(parts)
            last = parts[-1]
            if done > len(problem.parts) or last[2] is None or last[4] != "" or not prefix.endswith(f"={last[2]}"):
                return None
            if [part[1] for part in parts] != [header(i, part) for i, part in enumerate(problem.parts[:done])]:
                return None  # the prefix strays from the task's grammar: the warm-up policy never writes it
            current = problem.parts[done - 1]
            check = warmup_probabilities(current)["check"]
            expectation *= (1 - check) + check * gamma ** length(f" check {current.bits}")
        for index in range(done, len(problem.parts)):
            part = problem.parts[index]
            rates = warmup_probabilities(part)
            separator = SEPARATOR if index > 0 else ""
            expectation *= sum((rates["trace"] if trace else 1 - rates["trace"])
                               * (rates["check"] if check else 1 - rates["check"])
                               * gamma ** length(separator + format_part(index, part, trace, check))
                               for trace in (False, True) for check in (False, True))
        return math.log(expectation) / math.log(gamma)
