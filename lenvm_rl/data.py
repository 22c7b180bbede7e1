"""Loading prompt datasets and rendering prompts the way the policy expects (chat template when it has one)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

__all__ = [
    "check_local_path",
    "looks_like_local_path",
    "load_prompt_dataset",
    "render_prompt",
    "tokenizer_fingerprint",
    "check_same_tokenizer",
    "pad_prompt_completion_batch",
    "resolve_device",
]

_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id ``org/name``: it exists, starts with ``.``,
    ``/`` or ``~``, has more than one path separator, or its parent directory exists here (``runs/tiny-polcy`` when
    ``runs/`` exists)."""
    text = str(name)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or path.is_absolute():
        return True
    if os.sep in text and text.count(os.sep) > 1:
        return True
    return os.sep in text and path.parent.is_dir()


def check_local_path(name: str | os.PathLike | None, what: str) -> None:
    """Raise ``FileNotFoundError("<what> <name> does not exist")`` at once when ``name`` looks like a local path
    (:func:`looks_like_local_path`) but is not there, instead of letting transformers try the hub with it."""
    if name is None:
        return
    if looks_like_local_path(name) and not Path(str(name)).expanduser().exists():
        raise FileNotFoundError(f"{what} {name} does not exist")


def load_prompt_dataset(
    dataset: str, split: str = "train", column: str = "prompt", config_name: str | None = None
) -> Dataset:
    """Load prompts from a local file (json/jsonl/parquet/csv), a directory saved with ``save_to_disk``, or a hub
    dataset name (with ``config_name`` and ``split``). Checks that ``column`` exists and the split is not empty."""
    path = Path(dataset)
    if path.is_file():
        kind = _FILE_FORMATS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"{dataset}: unsupported prompt file type {path.suffix!r}; use one of {sorted(_FILE_FORMATS)}"
            )
        try:
            data = load_dataset(kind, data_files=str(path), split="train")
        except ValueError as error:  # datasets refuses files with no rows ("corresponds to no data")
            raise ValueError(f"{dataset}: the prompt file is empty or unreadable ({error})") from error
    elif path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json")):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"{dataset}: no split {split!r}; available splits: {sorted(loaded)}")
            loaded = loaded[split]
        data = loaded
    elif path.exists():
        raise FileNotFoundError(f"prompt dataset {dataset} is neither a file nor a saved dataset directory")
    elif looks_like_local_path(dataset):
        raise FileNotFoundError(f"prompt dataset {dataset} does not exist")
    else:
        data = load_dataset(dataset, config_name, split=split)
    if column not in data.column_names:
        raise ValueError(f"{dataset}: prompt column {column!r} not found (the dataset has no column {column!r}); "
                         f"available columns: {data.column_names}")
    if len(data) == 0:
        raise ValueError(f"{dataset}: split {split!r} has no prompts")
    return data


def render_prompt(
    tokenizer: Any, prompt: str | list[dict[str, str]], use_chat_template: bool = True, system_prompt: str | None = None
) -> tuple[str, bool]:
    """Render one prompt to text. Conversational prompts (a list of ``{"role", "content"}`` messages) and plain
    strings both go through the tokenizer's chat template with a generation prompt when it has one and
    ``use_chat_template`` is on. Returns ``(text, templated)``; templated text already carries its special tokens."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        messages = list(prompt)
    else:
        raise ValueError(
            f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}: {prompt!r}"
        )
    templated = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
    if not templated:
        if not isinstance(prompt, str):
            raise ValueError("conversational prompts need a tokenizer with a chat template")
        return prompt, False
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise ``cpu``, ``cuda`` or ``cuda:N``, refused early (with a
    ``ValueError`` naming the value) when unknown or when CUDA is asked for on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda (or cuda:N), got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is available")
    return device


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary and EOS/pad ids: equal fingerprints mean token ids agree."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "eos": tokenizer.eos_token_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_same_tokenizer(expected: str, tokenizer: Any, what: str) -> None:
    """Raise ``ValueError`` when ``tokenizer``'s fingerprint differs from ``expected`` (``what`` names the pairing)."""
    actual = tokenizer_fingerprint(tokenizer)
    if actual != expected:
        raise ValueError(
            f"{what}: tokenizers differ (fingerprint {actual} vs {expected}): the critic's tokenizer differs from the "
            "policy's, and the critic reads the policy's token ids, so both must share one tokenizer"
        )


def pad_prompt_completion_batch(
    rows: list[dict[str, Any]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out rollout rows as TRL does: left-padded ``prompt_ids``/``prompt_mask`` ``(B, P)`` and right-padded
    ``completion_ids``/``completion_mask`` ``(B, T)``."""
    prompt_width = max(len(r["prompt_ids"]) for r in rows)
    completion_width = max(len(r["completion_ids"]) for r in rows)
    batch = len(rows)
    prompt_ids = torch.full((batch, prompt_width), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, prompt_width), dtype=torch.long)
    completion_ids = torch.full((batch, completion_width), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((batch, completion_width), dtype=torch.long)
    for row, record in enumerate(rows):
        prompt, completion = list(record["prompt_ids"]), list(record["completion_ids"])
        if prompt:
            prompt_ids[row, prompt_width - len(prompt):] = torch.tensor(prompt)
            prompt_mask[row, prompt_width - len(prompt):] = 1
        if completion:
            completion_ids[row, : len(completion)] = torch.tensor(completion)
            completion_mask[row, : len(completion)] = 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask
