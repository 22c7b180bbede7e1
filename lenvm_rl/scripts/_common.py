"""Helpers shared by the jobs (never imported by the library)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["end_job", "load_tokenizer"]


def end_job(trainer: Any) -> None:
    """End a training job the way TRL's scripts do: wait for every process, then finish the trackers and destroy the
    process group (``Trainer.end``). Leaving the group to interpreter shutdown lets one rank tear down while another
    is still in a collective, which intermittently aborts two-process runs after they have saved."""
    trainer.accelerator.wait_for_everyone()
    trainer.end()


def load_tokenizer(name: str | None, fallbacks: Sequence[str | None]) -> Any:
    """The tokenizer at ``name``, else the first of ``fallbacks`` that loads (EOS checked, pad set)."""
    from transformers import AutoTokenizer

    from ..data import check_local_path
    from ..modeling import check_tokenizer

    errors = []
    for candidate in [name, *fallbacks] if name else list(fallbacks):
        if not candidate:
            continue
        try:
            check_local_path(candidate, "tokenizer")
            return check_tokenizer(AutoTokenizer.from_pretrained(candidate))
        except (OSError, ValueError) as error:
            if name:
                raise
            errors.append(f"{candidate}: {error}")
    raise ValueError("no tokenizer found; pass --tokenizer (tried " + "; ".join(errors or ["nothing"]) + ")")
