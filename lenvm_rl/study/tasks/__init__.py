"""The study's built-in tasks, one object each, registered by name.

A task is everything the harness needs to know about a problem family that it generates itself: its prompts (with
the columns its reward reads), the warm-up completions that make the starting policy, its correctness reward, the
segments a completion is made of (reported as rates), the ideal completion (computed, not trained), and two
diagnostics where it can compute them: the starting policy's accuracy with a decision forced, and the starting
policy's exact expected remaining length at the states where length is decided (an oracle critic's prediction,
which the study compares the trained critic with). The runner (:mod:`lenvm_rl.study.runner`) reads every task the
same way.

Adding a task is one file in this package that defines a :class:`StudyTask` subclass decorated with
:func:`register_task`; a task outside the package is named by its import path, ``my_module:MyTask``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

__all__ = ["StudyTask", "register_task", "get_task", "task_names", "DecisionEvaluator"]

# evaluate(prefix, correctness) → per-prompt metrics of the starting policy with prefix(row) forced at the start of
# every completion (lenvm_rl.study.evaluate.evaluate_policy with the study's evaluation settings)
DecisionEvaluator = Callable[[Callable[[dict[str, Any]], str], Callable[..., Any]], dict[str, Any]]

_REGISTRY: dict[str, type[StudyTask]] = {}


class StudyTask:
    """A built-in study task: generated prompts, warm-up data, correctness, ideal policy and diagnostics.

    Rows are dicts with a chat-message ``prompt`` (one user message), the columns the reward function reads, and
    ``difficulty`` (what the report breaks results down by)."""

    name: ClassVar[str]
    #: import path of the correctness reward (the study's first reward function when the recipe names none)
    reward_func: ClassVar[str]
    #: token limit of the warm-up's SFT examples (prompt + completion)
    warmup_max_length: ClassVar[int] = 160
    #: the segments :meth:`structure` reports, with the sentence the report uses for each rate
    segments: ClassVar[dict[str, str]] = {}
    #: what the ideal row of the report is, in one sentence
    ideal_note: ClassVar[str] = ""
    #: the column holding each prompt's token budget, on a budget task (:mod:`lenvm_rl.study.tasks.budget`)
    budget_column: ClassVar[str | None] = None

    def rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        """``count`` prompt rows drawn with ``seed``."""
        raise NotImplementedError

    def warmup_rows(self, count: int, seed: int) -> list[dict[str, Any]]:
        """``count`` SFT rows (``prompt`` and ``completion`` chat messages) written at the warm-up policy's rates."""
        raise NotImplementedError

    def structure(self, completion: str) -> dict[str, float]:
        """The :attr:`segments` a completion holds (1/0, or a fraction where a completion has several places)."""
        return {}

    def ideal_completion(self, row: dict[str, Any]) -> str | None:
        """The completion of the ideal policy (no EOS), or ``None`` when the task has none."""
        return None

    def ideal_structure(self) -> dict[str, float]:
        """:meth:`structure` of the ideal policy (the report's ideal row)."""
        return {}

    def forced_decisions(self, evaluate: DecisionEvaluator, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        """Where reasoning pays: the starting policy's accuracy with a decision forced each way. Returns
        ``{"level_name": str, "level": [per prompt], "direct_correct", "direct_tokens", "trace_correct",
        "trace_tokens": [per prompt]}`` or ``None``."""
        return None

    def decision_states(self, prompt: str, completion: str) -> list[tuple[str, str]]:
        """``(state name, completion prefix)`` of the states where ``completion`` decided its length."""
        return []

    def expected_remaining(self, prompt: str, prefix: str, length: Callable[[str], int], gamma: float
                           ) -> float | None:
        """The warm-up policy's value-space expected remaining length after ``prefix`` (``ln E[γ^R] / ln γ``, EOS
        counted; ``length(text)`` counts tokens), or ``None`` where it is not computed."""
        return None


def register_task(cls: type[StudyTask]) -> type[StudyTask]:
    """Class decorator: make ``cls`` available to :func:`get_task` under ``cls.name``."""
    if not getattr(cls, "name", None) or not getattr(cls, "reward_func", None):
        raise TypeError(f"{cls.__qualname__} must set the class attributes name and reward_func")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a study task named {cls.name!r} is already registered ({_REGISTRY[cls.name].__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def task_names() -> list[str]:
    """Names of the registered tasks."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_task(name: str) -> StudyTask:
    """The task registered as ``name``, or the :class:`StudyTask` subclass at the import path ``module:Class``."""
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"task {name!r}: cannot import {attribute!r} from {module!r} ({error})") from error
        if not (isinstance(cls, type) and issubclass(cls, StudyTask)):
            raise ValueError(f"task {name!r} is not a StudyTask subclass")
        return cls()
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown study task {name!r}; registered: {sorted(_REGISTRY)} (or give module:Class)")
    return _REGISTRY[name]()
