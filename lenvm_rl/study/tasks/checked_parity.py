"""Checked parity (:mod:`lenvm_rl.tasks`): ``parity 10110`` → ``[reduction " "] "=" answer [" check " bits]``.

Two decisions per completion: the reduction trace at the first token (pays from :data:`~lenvm_rl.tasks.TRACE_PAYS_FROM`
bits on) and the check after the answer (pure waste)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from ...tasks import (
    _FIRST_ANSWER,
    TRACE_PAYS_FROM,
    completion_structure,
    expected_remaining,
    format_completion,
    format_parity_prompt,
    format_reduction,
    ideal_completion,
    make_bits,
    parse_prompt,
    warmup_probabilities,
)
from . import DecisionEvaluator, StudyTask, register_task


@register_task
class CheckedParity(StudyTask):
    name = "checked_parity"
    reward_func = "lenvm_rl.tasks:checked_parity_correctness"
    warmup_max_length = 160
    segments = {"trace": "fraction of sampled completions that write the reduction trace",
                "check": "fraction that write the check after the answer"}
    ideal_note = (f"the policy that writes the reduction trace only from {TRACE_PAYS_FROM} bits on (where a small "
                  "model needs it), never the check, and is always right (`lenvm_rl.tasks.ideal_completion`); "
                  "columns d=k: mean tokens on k-bit strings")

    def rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        return [{"prompt": [{"role": "user", "content": format_parity_prompt(p)}], "answer": p.answer,
                 "difficulty": p.difficulty} for p in make_bits(count, seed=seed)]

    def warmup_rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        rows = []
        for problem in make_bits(count, seed=seed):
            rates = warmup_probabilities(problem)
            text = format_completion(problem, trace=rng.random() < rates["trace"],
                                     check=rng.random() < rates["check"])
            rows.append({"prompt": [{"role": "user", "content": format_parity_prompt(problem)}],
                         "completion": [{"role": "assistant", "content": text}]})
        return rows

    def structure(self, completion: str) -> dict[str, float]:
        return {key: float(value) for key, value in completion_structure(completion).items()}

    def ideal_completion(self, row: dict[str, Any]) -> str:
        return ideal_completion(parse_prompt(row["prompt"]))

    def ideal_structure(self) -> dict[str, float]:
        return {"check": 0.0}

    def forced_decisions(self, evaluate: DecisionEvaluator, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from ...tasks import checked_parity_correctness

        direct = evaluate(lambda row: "=", checked_parity_correctness)
        traced = evaluate(lambda row: format_reduction(parse_prompt(row["prompt"]))[0], checked_parity_correctness)
        return {"level_name": "bits", "level": [row["difficulty"] for row in rows],
                "direct_correct": direct["correct"].tolist(), "direct_tokens": direct["tokens"].tolist(),
                "trace_correct": traced["correct"].tolist(), "trace_tokens": traced["tokens"].tolist()}

    def decision_states(self, prompt: str, completion: str) -> list[tuple[str, str]]:
        states = [("first token", "")]
        match = _FIRST_ANSWER.search(completion)
        if match:
            states.append(("after the answer", completion[: match.end()]))
        return states

    def expected_remaining(self, prompt: str, prefix: str, length: Callable[[str], int], gamma: float
                           ) -> float | None:
        try:
            problem = parse_prompt(prompt.strip())
        except ValueError:
            return None
        return expected_remaining(problem, prefix, length, gamma)
