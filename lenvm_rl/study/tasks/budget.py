"""Budget variants of the built-in tasks: the same problems, each prompt asking for a token budget ``N``.

A row of ``<task>_budget`` is the base task's row with a ``budget`` column and the budget written on the prompt's
second line, ``"parity 10110\\nwithin 12 tokens"``. Budgets cycle through the task's :attr:`BudgetedTask.budgets`
(row ``i`` gets ``budgets[i % k]``), so every budget has the same number of prompts, independent of difficulty.
The warm-up completions are the base task's, whatever the budget: the starting policy reads the budget line and
ignores it, and following it is what RL has to teach. ``N`` counts completion tokens, EOS included, like every
length in the study.

Everything else (segments, ideal completion, diagnostics) is the base task's, read on the prompt without its
budget line; the ideal row is the base task's ideal, which ignores the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ...data import BUDGET_LINE, render_budget, split_budget, without_budget
from . import DecisionEvaluator, StudyTask, register_task
from .checked_parity import CheckedParity
from .multi_parity import MultiParity, multi_parity_correctness

# render_budget, split_budget and without_budget live in lenvm_rl.data (the SmolLM2 budget files write prompts too)
__all__ = ["BudgetedTask", "render_budget", "split_budget", "without_budget", "multi_parity_budget_correctness"]

BUDGET_COLUMN = "budget"


def _row_without_budget(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "prompt": without_budget(row["prompt"])}


def _budget_blind(reward: Callable[..., Any]) -> Callable[..., Any]:
    """``reward`` called on the prompts without their budget lines (the budget does not change what is correct)."""
    def blind(*args: Any, prompts: list[Any] | None = None, **kwargs: Any) -> Any:
        stripped = None if prompts is None else [without_budget(prompt) for prompt in prompts]
        return reward(*args, prompts=stripped, **kwargs)
    return blind


def multi_parity_budget_correctness(completions: list[Any], answer: list[Any], prompts: list[Any] | None = None,
                                    **kwargs: Any) -> list[float]:
    """:func:`~lenvm_rl.study.tasks.multi_parity.multi_parity_correctness` on prompts with a budget line (the budget
    does not change what is correct; the budget rewards and terms read the ``budget`` column)."""
    return _budget_blind(multi_parity_correctness)(completions, answer, prompts=prompts, **kwargs)


class BudgetedTask(StudyTask):
    """A base task whose prompts carry a token budget. Subclasses set :attr:`base` and :attr:`budgets`."""

    base: ClassVar[type[StudyTask]]
    #: the budgets the prompts cycle through (completion tokens, EOS counted), tightest first
    budgets: ClassVar[tuple[int, ...]]
    budget_column: ClassVar[str] = BUDGET_COLUMN

    def __init__(self) -> None:
        self._base = self.base()
        self.segments = self._base.segments
        self.ideal_note = f"{self._base.ideal_note} (it ignores the budget)"
        self.warmup_max_length = self._base.warmup_max_length + len(BUDGET_LINE) + 4

    def _with_budgets(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        budgeted = []
        for index, row in enumerate(rows):
            budget = self.budgets[index % len(self.budgets)]
            (message,) = row["prompt"]
            prompt = [{**message, "content": render_budget(message["content"], budget)}]
            budgeted.append({**row, "prompt": prompt, self.budget_column: budget})
        return budgeted

    def rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        return self._with_budgets(self._base.rows(count, seed))

    def warmup_rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        return [{key: value for key, value in row.items() if key != self.budget_column}
                for row in self._with_budgets(self._base.warmup_rows(count, seed))]

    def structure(self, completion: str) -> dict[str, float]:
        return self._base.structure(completion)

    def ideal_completion(self, row: dict[str, Any]) -> str | None:
        return self._base.ideal_completion(_row_without_budget(row))

    def ideal_structure(self) -> dict[str, float]:
        return self._base.ideal_structure()

    def forced_decisions(self, evaluate: DecisionEvaluator, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        def on_base_rows(prefix: Callable[[dict[str, Any]], str], correctness: Callable[..., Any]) -> dict[str, Any]:
            return evaluate(lambda row: prefix(_row_without_budget(row)), _budget_blind(correctness))

        return self._base.forced_decisions(on_base_rows, [_row_without_budget(row) for row in rows])

    def decision_states(self, prompt: str, completion: str) -> list[tuple[str, str]]:
        return self._base.decision_states(split_budget(prompt)[0], completion)

    def expected_remaining(self, prompt: str, prefix: str, length: Callable[[str], int], gamma: float
                           ) -> float | None:
        return self._base.expected_remaining(split_budget(prompt.strip())[0], prefix, length, gamma)


@register_task
class CheckedParityBudget(BudgetedTask):
    name = "checked_parity_budget"
    reward_func = CheckedParity.reward_func  # it reads the answer column only
    base = CheckedParity
    # direct answers take 3 tokens, a trace on 8 bits about 40: the tight budgets force a choice on long strings
    budgets = (8, 12, 16, 24, 32)


@register_task
class MultiParityBudget(BudgetedTask):
    name = "multi_parity_budget"
    reward_func = "lenvm_rl.study.tasks.budget:multi_parity_budget_correctness"
    base = MultiParity
    # the starting policy writes about 105 tokens (p99 about 200); the ideal about 107
    budgets = (48, 64, 96, 128, 160)
