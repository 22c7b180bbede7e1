"""Rollout generation: sample ``n`` completions per prompt from a policy and save them as a ``datasets`` dataset.

The output directory holds a ``DatasetDict`` with ``train`` and ``eval`` splits (split by prompt: no prompt is in
both) and ``rollout_info.json`` recording the policy, the tokenizer fingerprint and the sampling settings. Columns:

- ``prompt_index`` (int): row of the prompt in the source dataset; ``sample_index`` (int): 0 … n-1;
- ``prompt_ids`` (list[int]): the rendered, tokenized prompt; ``completion_ids`` (list[int]): the sampled tokens,
  ending with EOS when the completion terminated;
- ``terminated`` (bool): the completion ended with EOS; ``completion_length`` (int): tokens generated, **EOS counted**.

Work is done in chunks of prompts; each finished chunk is written atomically to ``<output_dir>.partial/`` so a
re-run after a crash continues where it stopped (same settings required), and the final dataset replaces
``output_dir`` in one rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from .data import (
    TokenizerFingerprint,
    check_local_path,
    check_prompt_round_trip,
    load_prompt_dataset,
    render_prompt,
    resolve_device,
    tokenizer_record,
)
from .io import directory_replaced_atomically, write_text_atomically
from .modeling import check_tokenizer

__all__ = ["RolloutConfig", "generate_rollouts", "sample_completions", "save_rollouts", "load_rollouts",
           "ROLLOUT_INFO_FILE"]

logger = logging.getLogger(__name__)

ROLLOUT_INFO_FILE = "rollout_info.json"
_SETTINGS_FILE = "settings.json"


@dataclass
class RolloutConfig:
    """Sample completions from a policy for critic training (``lenvm-rl rollout``)."""

    policy: str = field(metadata={"help": "Policy: hub name or local directory of a causal LM (with its tokenizer)."})
    dataset: str = field(
        metadata={"help": "Prompts: a local json/jsonl/parquet/csv file, a save_to_disk directory, or a hub name."}
    )
    output_dir: str = field(metadata={"help": "Where to save the rollout dataset (train/eval DatasetDict)."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to render and encode prompts with (default: the policy's)."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompt dataset to read."})
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a hub prompt dataset."})
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column holding prompts (strings or lists of chat messages)."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts (None: all)."})
    use_chat_template: bool = field(
        default=True, metadata={"help": "Render prompts with the tokenizer's chat template when it has one."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message for every prompt."})
    num_samples: int = field(default=4, metadata={"help": "Completions sampled per prompt (n)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    max_new_tokens: int = field(
        default=512, metadata={"help": "Token limit; completions that reach it without EOS are marked truncated."}
    )
    seed: int = field(default=0, metadata={"help": "Base seed; chunk i samples with seed + i, so resumes reproduce."})
    prompts_per_batch: int = field(default=8, metadata={"help": "Prompts per generate call (each gives n rows)."})
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of prompts held out in the eval split (split by prompt)."}
    )
    backend: str = field(default="transformers", metadata={"help": "'transformers' (always) or 'vllm' (GPU)."})
    dtype: str = field(default="auto", metadata={"help": "Policy dtype: auto, float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "Device for the transformers backend: auto, cpu, cuda."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modeling code from the hub."})

    def __post_init__(self) -> None:
        checks = [
            (self.num_samples >= 1, f"num_samples must be ≥ 1, got {self.num_samples}"),
            (self.temperature >= 0, f"temperature must be ≥ 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must lie in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be ≥ 0, got {self.top_k}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}"),
            (self.prompts_per_batch >= 1, f"prompts_per_batch must be ≥ 1, got {self.prompts_per_batch}"),
            (0 <= self.eval_fraction < 1, f"eval_fraction must lie in [0, 1), got {self.eval_fraction}"),
            (self.backend in ("transformers", "vllm"),
             f"backend must be 'transformers' or 'vllm', got {self.backend!r}"),
            (self.max_prompts is None or self.max_prompts >= 1, f"max_prompts must be ≥ 1, got {self.max_prompts}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def sampling_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        keys = ("policy", "dataset", "dataset_split", "dataset_config", "prompt_column", "max_prompts",
                "use_chat_template", "system_prompt", "num_samples", "temperature", "top_p", "top_k",
                "max_new_tokens", "seed", "prompts_per_batch", "backend")
        settings = {key: getattr(self, key) for key in keys}
        if self.tokenizer_name_or_path is not None:  # absent when unset, so older rollout directories still match
            settings["tokenizer_name_or_path"] = self.tokenizer_name_or_path
        return settings


def _resolve_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else getattr(torch, name)



def _eos_ids(tokenizer: Any, generation_config: Any | None) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {int(i) for i in ids if i is not None}


def _split_completion(tokens: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """Cut a generated token list at its first EOS (kept). Returns ``(completion_ids, terminated)``."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: position + 1], True
    return tokens, False


def sample_completions(model: Any, tokenizer: Any, prompt_ids: list[list[int]], num_samples: int = 1,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 512,
                       seed: int = 0, eos_ids: set[int] | None = None,
                       compact: bool = False) -> list[tuple[list[int], bool]]:
    """Sample ``num_samples`` completions for each tokenized prompt with ``model.generate`` (left padding).

    Returns, prompt-major, the ``(completion_ids, terminated)`` of every sample: ids are cut after the first EOS
    (kept), ``terminated`` says whether one was produced. ``temperature=0`` is greedy. ``compact`` decodes with
    :func:`~lenvm_rl.sampling.decode_compacted` (ended rows leave the batch; the same distribution, another random
    stream; greedy gives the same tokens).
    """
    from transformers import GenerationConfig, LogitsProcessorList, set_seed

    from .sampling import SamplingWarper, decode_compacted

    eos_ids = eos_ids or _eos_ids(tokenizer, getattr(model, "generation_config", None))
    set_seed(seed)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    sample = temperature > 0
    # a nucleus without sorting the vocabulary at every step (the same distribution: lenvm_rl.sampling)
    warper = SamplingWarper(temperature, top_k, top_p) if sample and top_p < 1.0 else None
    if warper is not None:  # the warpers are the processor's: generate's own are off
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    elif sample:
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    else:
        sampling = {"temperature": None, "top_p": None, "top_k": None}
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        **sampling,
        eos_token_id=sorted(eos_ids),
        pad_token_id=tokenizer.pad_token_id,
    )
    # Repeating rows (rather than num_return_sequences) also works for greedy decoding and keeps rows prompt-major.
    input_ids = batch["input_ids"].repeat_interleave(num_samples, dim=0)
    attention_mask = batch["attention_mask"].repeat_interleave(num_samples, dim=0)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=generation_config,
            logits_processor=LogitsProcessorList([warper]) if warper is not None else None,
            custom_generate=decode_compacted if compact else None,
        )
    generated = output[:, batch["input_ids"].shape[1]:].tolist()
    return [_split_completion(tokens, eos_ids) for tokens in generated]


def _generate_chunk(model: Any, tokenizer: Any, prompt_ids: list[list[int]], config: RolloutConfig, seed: int,
                    eos_ids: set[int]) -> list[tuple[list[int], bool]]:
    return sample_completions(model, tokenizer, prompt_ids, config.num_samples, config.temperature, config.top_p,
                              config.top_k, config.max_new_tokens, seed, eos_ids)


def _generate_chunk_vllm(llm: Any, prompt_ids: list[list[int]], config: RolloutConfig, seed: int,
                         eos_ids: set[int]) -> list[tuple[list[int], bool]]:
    from vllm import SamplingParams

    params = SamplingParams(
        n=config.num_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k if config.top_k > 0 else -1,
        max_tokens=config.max_new_tokens,
        seed=seed,
        stop_token_ids=sorted(eos_ids),
    )
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    results = []
    for request in outputs:
        for completion in request.outputs:
            tokens = list(completion.token_ids)
            if completion.finish_reason == "stop" and (not tokens or tokens[-1] not in eos_ids):
                tokens.append(min(eos_ids))  # vLLM may leave the stop token out; our lengths count it
            results.append(_split_completion(tokens, eos_ids))
    return results


@contextlib.contextmanager
def _datasets_progress_bars_off() -> Iterator[None]:
    # Per-chunk parquet writes would each print a bar under the rollout bar.
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _split_by_prompt(rows: Dataset, eval_fraction: float, seed: int) -> DatasetDict:
    prompt_indices = sorted(set(rows["prompt_index"]))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompt_indices), generator=generator).tolist()
    num_eval = math.floor(eval_fraction * len(prompt_indices) + 0.5) if eval_fraction > 0 else 0
    if eval_fraction > 0 and len(prompt_indices) > 1:
        num_eval = min(max(num_eval, 1), len(prompt_indices) - 1)
    eval_prompts = {prompt_indices[i] for i in order[:num_eval]}
    if not eval_prompts:
        return DatasetDict(train=rows)
    is_eval = [index in eval_prompts for index in rows["prompt_index"]]
    return DatasetDict(
        train=rows.select([i for i, flag in enumerate(is_eval) if not flag]),
        eval=rows.select([i for i, flag in enumerate(is_eval) if flag]),
    )


def generate_rollouts(config: RolloutConfig) -> DatasetDict:
    """Generate, split and save rollouts as described in the module docstring. Returns the saved ``DatasetDict``.

    A finished ``output_dir`` made with the same settings is returned as is; one made with other settings, or a
    ``.partial`` directory from a run with other settings, is an error (nothing is overwritten).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_local_path(config.policy, "policy")
    check_local_path(config.tokenizer_name_or_path, "tokenizer_name_or_path")
    output_dir = Path(config.output_dir)
    partial_dir = output_dir.with_name(output_dir.name + ".partial")
    settings = config.sampling_settings()
    if (output_dir / ROLLOUT_INFO_FILE).exists():
        existing = json.loads((output_dir / ROLLOUT_INFO_FILE).read_text())
        if existing.get("settings") != settings:
            raise ValueError(
                f"{output_dir} already holds rollouts made with other settings; choose a new output_dir or remove it"
            )
        logger.info("%s is complete; nothing to do", output_dir)
        return load_from_disk(str(output_dir))

    prompts = load_prompt_dataset(config.dataset, config.dataset_split, config.prompt_column, config.dataset_config)
    if config.max_prompts is not None:
        prompts = prompts.select(range(min(config.max_prompts, len(prompts))))
    tokenizer_name = config.tokenizer_name_or_path or config.policy
    tokenizer = check_tokenizer(
        AutoTokenizer.from_pretrained(tokenizer_name, trust_remote_code=config.trust_remote_code)
    )
    tokenizer.padding_side = "left"
    prompt_ids, texts = [], []
    for prompt in prompts[config.prompt_column]:
        text, templated = render_prompt(tokenizer, prompt, config.use_chat_template, config.system_prompt)
        texts.append(text)
        prompt_ids.append(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    check_prompt_round_trip(tokenizer, texts, f"rollout (tokenizer {tokenizer_name})", token_ids=prompt_ids)

    partial_dir.mkdir(parents=True, exist_ok=True)
    settings_path = partial_dir / _SETTINGS_FILE
    if settings_path.exists():
        if json.loads(settings_path.read_text()) != settings:
            raise ValueError(
                f"{partial_dir} holds a partial run with other settings; remove it or use another output_dir"
            )
    else:
        write_text_atomically(settings_path, json.dumps(settings, indent=2))

    num_chunks = math.ceil(len(prompt_ids) / config.prompts_per_batch)
    chunk_paths = [partial_dir / f"chunk-{i:06d}.parquet" for i in range(num_chunks)]
    todo = [i for i, path in enumerate(chunk_paths) if not path.exists()]
    if len(todo) < num_chunks:
        logger.info("resuming: %d of %d chunks already done in %s", num_chunks - len(todo), num_chunks, partial_dir)

    if todo:
        if config.backend == "vllm":
            try:
                from vllm import LLM
            except ImportError as error:
                raise ValueError("backend 'vllm' needs vLLM installed (pip install vllm; GPU only)") from error
            engine = LLM(model=config.policy, tokenizer=tokenizer_name, dtype=config.dtype, seed=config.seed,
                         trust_remote_code=config.trust_remote_code)
            eos_ids = _eos_ids(tokenizer, None)
        else:
            engine = AutoModelForCausalLM.from_pretrained(
                config.policy, dtype=_resolve_dtype(config.dtype), trust_remote_code=config.trust_remote_code
            ).to(resolve_device(config.device)).eval()
            eos_ids = _eos_ids(tokenizer, engine.generation_config)

        progress = tqdm(total=len(prompt_ids) * config.num_samples, desc="rollouts", unit="completion",
                        initial=(num_chunks - len(todo)) * config.prompts_per_batch * config.num_samples)
        for chunk in todo:
            start = chunk * config.prompts_per_batch
            chunk_prompts = prompt_ids[start:start + config.prompts_per_batch]
            if config.backend == "vllm":
                samples = _generate_chunk_vllm(engine, chunk_prompts, config, config.seed + chunk, eos_ids)
            else:
                samples = _generate_chunk(engine, tokenizer, chunk_prompts, config, config.seed + chunk, eos_ids)
            rows = []
            for offset, (completion_ids, terminated) in enumerate(samples):
                local, sample_index = divmod(offset, config.num_samples)
                rows.append({
                    "prompt_index": start + local,
                    "sample_index": sample_index,
                    "prompt_ids": chunk_prompts[local],
                    "completion_ids": completion_ids,
                    "terminated": terminated,
                    "completion_length": len(completion_ids),
                })
            scratch = chunk_paths[chunk].with_suffix(".tmp")
            with _datasets_progress_bars_off():
                Dataset.from_list(rows).to_parquet(str(scratch))
            os.replace(scratch, chunk_paths[chunk])
            progress.update(len(rows))
        progress.close()

    with _datasets_progress_bars_off():
        rows = concatenate_datasets([Dataset.from_parquet(str(path)) for path in chunk_paths])
    splits = save_rollouts(rows, output_dir, tokenizer, settings, config.eval_fraction, config.seed)
    for path in partial_dir.iterdir():
        path.unlink()
    partial_dir.rmdir()
    return splits


def save_rollouts(rows: Dataset, output_dir: str | os.PathLike, tokenizer: Any, settings: dict[str, Any],
                  eval_fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """Split rollout rows by prompt and save them with ``rollout_info.json``, replacing ``output_dir`` atomically.

    ``rows`` must have the columns of the module docstring; ``settings`` records how they were made (a resumed
    or repeated run compares them). Also used to save rollouts made by other means (e.g. synthetic ones).
    """
    missing = [c for c in ("prompt_index", "prompt_ids", "completion_ids", "terminated", "completion_length")
               if c not in rows.column_names]
    if missing:
        raise ValueError(f"rollout rows lack columns {missing}")
    if len(rows) == 0:
        raise ValueError("no rollout rows to save")
    splits = _split_by_prompt(rows, eval_fraction, seed)
    record = tokenizer_record(tokenizer)
    info = {
        "settings": settings,
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "tokenizer_fingerprint": record["fingerprint"],
        "tokenizer_record": record,
        "eos_token_ids": sorted(_eos_ids(tokenizer, None)),
        "num_prompts": len(set(rows["prompt_index"])),
        "num_rows": len(rows),
        "terminated_fraction": float(sum(rows["terminated"]) / len(rows)),
        "splits": {name: len(split) for name, split in splits.items()},
    }
    output_dir = Path(output_dir)
    with directory_replaced_atomically(output_dir) as scratch:
        splits.save_to_disk(str(scratch))
        write_text_atomically(scratch / ROLLOUT_INFO_FILE, json.dumps(info, indent=2))
    logger.info("saved %d rollouts (%.0f%% terminated) to %s", len(rows), 100 * info["terminated_fraction"], output_dir)
    return load_from_disk(str(output_dir))


def load_rollouts(path: str | os.PathLike) -> tuple[DatasetDict, dict[str, Any]]:
    """Load a rollout directory written by :func:`generate_rollouts`: ``(splits, rollout_info)``.

    ``rollout_info["tokenizer_fingerprint"]`` is a :class:`~lenvm_rl.data.TokenizerFingerprint` carrying the
    tokenizer record when the directory has one (older directories hold only the hash), so
    :func:`~lenvm_rl.data.check_same_tokenizer` can say what differs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rollouts {path} does not exist")
    info_path = path / ROLLOUT_INFO_FILE
    if not info_path.exists():
        raise FileNotFoundError(f"{path} is not a rollout directory (no {ROLLOUT_INFO_FILE}); run `lenvm-rl rollout`")
    splits = load_from_disk(str(path))
    for column in ("prompt_ids", "completion_ids", "terminated", "completion_length", "prompt_index"):
        for name, split in splits.items():
            if column not in split.column_names:
                raise ValueError(f"{path}: split {name!r} lacks column {column!r}")
    info = json.loads(info_path.read_text())
    if "tokenizer_fingerprint" in info:
        record = info.get("tokenizer_record")
        info["tokenizer_fingerprint"] = TokenizerFingerprint(info["tokenizer_fingerprint"], record)
    return splits, info
