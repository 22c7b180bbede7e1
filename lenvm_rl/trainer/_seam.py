"""The private TRL methods the trainers override, checked when a trainer module is imported.

``LenVMGRPOTrainer`` and ``LenVMPPOTrainer`` wrap ``GRPOTrainer._generate_and_score_completions``,
``GRPOTrainer._calculate_rewards`` and (for ``compact_generation``) ``GRPOTrainer._generate_single_turn``. Private
methods change between TRL minor versions without notice, so the tested minor version is pinned in
``pyproject.toml`` and the signatures are checked here, so that a TRL that moved the seam fails at import with a
message instead of training with a length term silently dropped or misaligned.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["TESTED_TRL", "SEAM", "check_trl_seam"]

TESTED_TRL = "1.16"
SEAM: dict[str, tuple[str, ...]] = {
    "_generate_and_score_completions": ("self", "inputs"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_single_turn": ("self", "prompt_ids", "images", "multimodal_fields", "num_generations",
                              "has_tool_images"),
}


def check_trl_seam(trainer_class: Any, version: str) -> None:
    """Raise ``ImportError`` naming every seam method of ``trainer_class`` that is missing or has another signature."""
    problems = []
    for name, expected in SEAM.items():
        method = getattr(trainer_class, name, None)
        if method is None:
            problems.append(f"{name} is missing")
            continue
        found = tuple(inspect.signature(method).parameters)
        if found != expected:
            problems.append(f"{name}{found} (expected {expected})")
    if problems:
        raise ImportError(f"lenvm_rl's trainers override private methods of TRL's {trainer_class.__name__}, tested "
                          f"with TRL {TESTED_TRL}.x; TRL {version} has changed them: {'; '.join(problems)}. Install "
                          f"trl>={TESTED_TRL},<{TESTED_TRL.split('.')[0]}.{int(TESTED_TRL.split('.')[1]) + 1}.")
