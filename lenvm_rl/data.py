"""Loading prompt datasets and rendering prompts the way the policy expects (chat template when it has one), and
the checks around them: local paths that do not exist fail at once (:func:`check_local_path`), prompts that the
tokenizer does not give back intact are reported (:func:`check_prompt_round_trip`), and tokenizers are identified by
a record that explains a mismatch (:func:`tokenizer_record`, :func:`check_same_tokenizer`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
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
    "tokenizer_record",
    "TokenizerFingerprint",
    "describe_tokenizer_difference",
    "check_same_tokenizer",
    "check_prompt_round_trip",
    "evenly_spaced_indices",
    "pad_prompt_completion_batch",
    "resolve_device",
    "render_budget",
    "split_budget",
    "without_budget",
]

_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` can only be a local path, never a hub id ``org/name``: it exists, starts with ``.``, ``/`` or
    ``~``, or has more than one path separator. Decided from the name alone, so that the answer never depends on
    which unrelated folders the working directory happens to hold (``runs/x`` reads as a hub id until it exists)."""
    text = str(name)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or path.is_absolute():
        return True
    return os.sep in text and text.count(os.sep) > 1


_HUB_REACHABLE: dict[str, str | None] = {}


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached (``"offline"`` when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is
    set, or the failed connection), or None when it answers. One 3-second connection attempt per process, so that a
    bare name that is neither a folder here nor reachable on the hub fails at once instead of after a minute of
    retries."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return "offline"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _HUB_REACHABLE:
        import socket
        from urllib.parse import urlparse

        parsed = urlparse(endpoint)
        try:
            socket.create_connection((parsed.hostname or "huggingface.co", parsed.port or 443), timeout=3).close()
            _HUB_REACHABLE[endpoint] = None
        except OSError as error:
            _HUB_REACHABLE[endpoint] = f"no connection to {parsed.hostname}: {error.strerror or error}"
    return _HUB_REACHABLE[endpoint]


def check_local_path(name: str | os.PathLike | None, what: str, hub: bool = True, check_hub: bool = True) -> None:
    """Fail at once, naming ``what``, when ``name`` cannot be loaded: a local path (:func:`looks_like_local_path`)
    that is not there (``"<what> <name> does not exist"``), or, for things that may live on the hub (``hub``), a name
    that is not a local folder while the hub is unreachable (``"<what> <name> is not a local directory, and the hub
    is unreachable (offline)"``). A hub id with the hub reachable is left to transformers. ``check_hub=False`` skips
    the hub question (a config that only describes a run, parsed where the run may never happen)."""
    if name is None:
        return
    if Path(str(name)).expanduser().exists():
        return
    if looks_like_local_path(name) or not hub:
        raise FileNotFoundError(f"{what} {name} does not exist")
    if not check_hub:
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        raise FileNotFoundError(f"{what} {name} is not a local directory, and the hub is unreachable ({reason})")


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
    else:
        check_local_path(dataset, "prompt dataset")
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


# a prompt's token budget, as the budget tasks and the SmolLM2 budget files write it on the last line
BUDGET_LINE = "\nwithin {budget} tokens"


def render_budget(content: str, budget: int) -> str:
    """``content`` with the budget line appended: ``"parity 101\\nwithin 12 tokens"``."""
    return content + BUDGET_LINE.format(budget=int(budget))


def split_budget(content: str) -> tuple[str, int | None]:
    """``(content without its budget line, N)``, or ``(content, None)`` when it has none."""
    head, separator, tail = content.rpartition("\nwithin ")
    words = tail.split()
    if not separator or len(words) != 2 or words[1] != "tokens" or not words[0].isdigit():
        return content, None
    return head, int(words[0])


def without_budget(prompt: Any) -> Any:
    """A prompt (a string or chat messages) with the budget line removed from its last user message."""
    if isinstance(prompt, str):
        return split_budget(prompt)[0]
    messages = [dict(message) for message in prompt]
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = split_budget(message["content"])[0]
            break
    return messages


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


# Encoded into every tokenizer record: spaces between digits, punctuation, a newline and mixed case are what
# tokenizers most often lose or merge differently (a byte-level pre-tokenizer over a character vocabulary drops
# the spaces of "3 2 8 7 9?").
TOKENIZER_PROBE_TEXT = "Add 3 2 8 7 9? The answer,\nplease: 29."


class TokenizerFingerprint(str):
    """A tokenizer fingerprint: the short hash of its vocabulary and EOS id (a plain ``str``, compared and written to
    JSON as before), optionally carrying the full record of :func:`tokenizer_record` in ``.record`` so that a
    mismatch can be explained, and so that tokenizers with one vocabulary but different pre-tokenizers (which encode
    the same text differently) are told apart. Fingerprints read from old ``rollout_info.json`` files carry no
    record; they are compared by hash only."""

    record: dict[str, Any] | None

    def __new__(cls, value: str, record: dict[str, Any] | None = None) -> TokenizerFingerprint:
        fingerprint = super().__new__(cls, value)
        fingerprint.record = record
        return fingerprint


def _vocab_hash(tokenizer: Any) -> str:
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "eos": tokenizer.eos_token_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer, for ``rollout_info.json`` and for explaining mismatches: ``fingerprint`` (the
    hash of :func:`tokenizer_fingerprint`), ``class`` (the class transformers loaded), ``name_or_path``,
    ``vocab_size`` (``len(tokenizer)``, added tokens included), ``special_tokens`` (``{name: [token, id]}``) and
    ``probe_ids`` (the ids of :data:`TOKENIZER_PROBE_TEXT`, no special tokens added)."""
    special = {}
    for name, token in sorted(getattr(tokenizer, "special_tokens_map", {}).items()):
        if isinstance(token, str):
            special[name] = [token, tokenizer.convert_tokens_to_ids(token)]
    probe = tokenizer(TOKENIZER_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    return {
        "fingerprint": _vocab_hash(tokenizer),
        "class": type(tokenizer).__name__,
        "name_or_path": getattr(tokenizer, "name_or_path", None),
        "vocab_size": len(tokenizer),
        "special_tokens": special,
        "probe_text": TOKENIZER_PROBE_TEXT,
        "probe_ids": [int(i) for i in probe],
    }


def tokenizer_fingerprint(tokenizer: Any) -> TokenizerFingerprint:
    """A short hash of a tokenizer's vocabulary and EOS id (equal hashes mean the vocabularies agree), carrying the
    tokenizer's :func:`tokenizer_record` in ``.record``."""
    record = tokenizer_record(tokenizer)
    return TokenizerFingerprint(record["fingerprint"], record)


def _as_record(expected: str | Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``(hash, record or None)`` from a fingerprint, a record, or a ``rollout_info.json`` dict."""
    if isinstance(expected, Mapping):
        if "tokenizer_record" in expected or "tokenizer_fingerprint" in expected:  # a rollout_info.json dict
            record = expected.get("tokenizer_record")
            return str(record["fingerprint"] if record else expected["tokenizer_fingerprint"]), record
        return str(expected["fingerprint"]), dict(expected)
    return str(expected), getattr(expected, "record", None)


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Index of the first position where ``a`` and ``b`` differ (the shorter length when one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def describe_tokenizer_difference(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """One sentence per difference between two :func:`tokenizer_record` s: the classes loaded, vocabulary size,
    special tokens, and the first token where the probe text's encodings part."""
    parts = [f"the expected tokenizer is {expected.get('class')} ({expected.get('name_or_path') or 'in memory'}), "
             f"the one loaded here is {actual.get('class')} ({actual.get('name_or_path') or 'in memory'})"]
    if expected.get("vocab_size") != actual.get("vocab_size"):
        parts.append(f"vocab size {expected.get('vocab_size')} vs {actual.get('vocab_size')}")
    expected_special, actual_special = expected.get("special_tokens") or {}, actual.get("special_tokens") or {}
    special = [f"{name} {expected_special.get(name)} vs {actual_special.get(name)}"
               for name in sorted(set(expected_special) | set(actual_special))
               if expected_special.get(name) != actual_special.get(name)]
    if special:
        parts.append("special tokens differ ([token, id]): " + "; ".join(special))
    expected_ids, actual_ids = list(expected.get("probe_ids") or []), list(actual.get("probe_ids") or [])
    if expected_ids != actual_ids:
        first = _first_difference(expected_ids, actual_ids)
        parts.append(f"they encode {expected.get('probe_text', TOKENIZER_PROBE_TEXT)!r} differently from token "
                     f"{first} on: {expected_ids[first:first + 8]} vs {actual_ids[first:first + 8]} "
                     f"({len(expected_ids)} vs {len(actual_ids)} tokens)")
    if len(parts) == 1:
        parts.append("same size, special tokens and probe encoding, but some token ids map to different strings")
    return "; ".join(parts)


def check_same_tokenizer(expected: str | Mapping[str, Any], tokenizer: Any, what: str) -> None:
    """Raise ``ValueError`` when ``tokenizer`` differs from ``expected``: a fingerprint (a plain hash, from an old
    ``rollout_info.json``, is compared by hash only), a :func:`tokenizer_record`, or a ``rollout_info.json`` dict.
    With a record on both sides, tokenizers that share a vocabulary but encode the probe text differently also
    differ (same vocabulary, other pre-tokenizer), and the message names each side's class and what differs: vocab
    size, special tokens, the first mismatching ids (``what`` names the pairing)."""
    expected_hash, expected_record = _as_record(expected)
    actual = tokenizer_record(tokenizer)
    # Special tokens are reported but not compared: a pad token set on one side only (TRL sets pad = EOS) changes
    # no token id of a prompt or completion.
    same_vocab = actual["fingerprint"] == expected_hash
    same_encoding = expected_record is None or "probe_ids" not in expected_record or (
        list(expected_record["probe_ids"]) == actual["probe_ids"])
    if same_vocab and same_encoding:
        return
    if expected_record is not None:
        details = describe_tokenizer_difference(expected_record, actual)
    else:
        details = (f"the tokenizer loaded here is {actual['class']} ({actual['name_or_path'] or 'in memory'}, "
                   f"vocab size {actual['vocab_size']}); the expected side recorded only a hash (written by an older "
                   "lenvm_rl; re-run `lenvm-rl rollout` for a full record)")
    hashes = (f"fingerprint {actual['fingerprint']} vs {expected_hash}" if not same_vocab
              else f"same vocabulary, fingerprint {expected_hash}, but different encodings")
    raise ValueError(
        f"{what}: tokenizers differ ({hashes}): {details}. The critic's tokenizer differs from the policy's, and the "
        "critic reads the policy's token ids, so both must share one tokenizer (pass the same tokenizer_name_or_path)"
    )


def _segments(text: str, special_tokens: Sequence[str]) -> list[str]:
    """``text`` cut at special tokens, each piece stripped of surrounding whitespace, empty pieces dropped."""
    if special_tokens:
        pattern = "|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True))
        pieces = re.split(pattern, text)
    else:
        pieces = [text]
    return [piece.strip() for piece in pieces if piece.strip()]


def _difference_window(original: str, decoded: str, width: int = 40) -> tuple[str, str]:
    """Both strings cut to ``width`` characters either side of where they first differ."""
    first = _first_difference(original, decoded)
    start = max(0, first - width)

    def cut(text: str) -> str:
        return ("…" if start else "") + text[start:first + width] + ("…" if len(text) > first + width else "")

    return cut(original), cut(decoded)


def evenly_spaced_indices(total: int, count: int) -> list[int]:
    """At most ``count`` distinct indices spread evenly over ``range(total)``, first and last included: a
    deterministic sample of a dataset (e.g. prompts to check) that does not favour its beginning."""
    count = min(count, total)
    if count <= 0:
        return []
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def check_prompt_round_trip(
    tokenizer: Any,
    texts: Sequence[str],
    what: str,
    token_ids: Sequence[Sequence[int]] | None = None,
    add_special_tokens: bool = False,
    sample_size: int = 32,
) -> bool:
    """Warn (``UserWarning``, with one corrupted example) when rendered prompts do not survive the tokenizer:
    ``decode(encode(text))`` must give back ``text``. Returns whether all sampled prompts survived.

    Special tokens (BOS, chat-role markers) may render with other spacing or be added by the tokenizer, so both
    sides are compared as their pieces between special tokens, each stripped of surrounding whitespace; any other
    change (dropped spaces, characters mapped to unk, merged text) is a corruption. ``token_ids`` are the ids the
    caller already encoded (else each text is encoded with ``add_special_tokens``); at most ``sample_size`` prompts,
    evenly spaced, are checked. ``what`` names the caller in the warning.
    """
    texts = list(texts)
    if not texts:
        return True
    indices = evenly_spaced_indices(len(texts), sample_size)
    special = [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]
    special += [str(t) for t in getattr(tokenizer, "additional_special_tokens", []) or []]
    added = getattr(tokenizer, "get_added_vocab", lambda: {})()
    special += [token for token in added if token not in special]
    failures = []
    for index in indices:
        text = texts[index]
        ids = token_ids[index] if token_ids is not None else tokenizer(
            text, add_special_tokens=add_special_tokens)["input_ids"]
        decoded = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if _segments(decoded, special) != _segments(text, special):
            failures.append((text, decoded))
    if not failures:
        return True
    original, decoded = _difference_window(*failures[0])
    warnings.warn(
        f"{what}: the tokenizer ({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '')}) does not "
        f"round-trip {len(failures)} of {len(indices)} sampled prompts: {original!r} comes back as {decoded!r} after "
        "encode/decode, so the model sees corrupted prompts. Check that transformers loaded the tokenizer you meant "
        "(the class above; pass tokenizer_name_or_path to load another one)",
        UserWarning,
        stacklevel=2,
    )
    return False


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
