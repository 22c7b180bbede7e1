"""``lenvm-rl predict-length``: predict each prompt's completion length at the prompt boundary with a LenVM critic
(:func:`lenvm_rl.decoding.predict_length`) and write the predictions, with the value-space error when realized
lengths are given."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import (
    check_local_path,
    check_prompt_round_trip,
    evenly_spaced_indices,
    load_prompt_dataset,
    render_prompt,
    resolve_device,
)
from ..decoding.prediction import predict_length
from ..evaluation import value_space_length
from ..io import files_replaced_atomically
from ..length_math import length_to_value
from ..modeling import LengthValueModel
from ._common import load_tokenizer

__all__ = ["PredictLengthArguments", "main"]


def _write_table(dataset: Any, path: str) -> None:
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".json", ".jsonl", ".parquet", ".csv"):
        raise ValueError(f"output file {path}: unsupported type {suffix!r} (use .jsonl, .json, .parquet or .csv)")
    with files_replaced_atomically(target.parent if str(target.parent) else Path(".")) as scratch:
        staged = Path(scratch) / target.name
        if suffix == ".parquet":
            dataset.to_parquet(str(staged))
        elif suffix == ".csv":
            dataset.to_csv(str(staged), index=False)
        else:
            dataset.to_json(str(staged), lines=True, force_ascii=False)


def _check_round_trip(tokenizer: Any, prompts: list[Any], chat_template: bool) -> None:
    """Warn when a sample of the prompts, rendered as :func:`~lenvm_rl.decoding.predict_length` renders them, does
    not survive the tokenizer (:func:`~lenvm_rl.data.check_prompt_round_trip`)."""
    texts, ids = [], []
    for index in evenly_spaced_indices(len(prompts), 32):
        text, templated = render_prompt(tokenizer, prompts[index], chat_template)
        texts.append(text)
        ids.append(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    check_prompt_round_trip(tokenizer, texts, f"predict-length (tokenizer {tokenizer.name_or_path})", token_ids=ids)


@dataclass
class PredictLengthArguments:
    """Predict each prompt's completion length at the prompt boundary with a LenVM critic and write the predictions."""

    critic: str = field(metadata={"help": "Critic checkpoint directory (LengthValueModel.save_pretrained)."})
    dataset: str = field(metadata={"help": "Local json/jsonl/parquet/csv file (or save_to_disk directory)."})
    output_file: str = field(metadata={"help": "Where to write the rows plus predictions (.jsonl, .parquet, .csv)."})
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column with the prompts (strings, or message lists for chat models)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the critic directory, then its backbone's source)."}
    )
    lengths_column: str | None = field(
        default=None,
        metadata={
            "help": "Optional column of realized lengths (int or list of sampled lengths per prompt, EOS counted): "
            "adds the value-space ground truth and reports the mean relative error."
        },
    )
    chat_template: bool = field(
        default=True, metadata={"help": "Apply the tokenizer's chat template when it has one."}
    )
    split: str = field(default="train", metadata={"help": "Split to read from a save_to_disk DatasetDict."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per critic forward pass."})
    dtype: str = field(default="float32", metadata={"help": "Backbone dtype: float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, ... or auto."})


DATACLASSES = (PredictLengthArguments,)


def main(args: PredictLengthArguments) -> None:
    check_local_path(args.critic, "critic")
    check_local_path(args.tokenizer, "tokenizer")
    critic = LengthValueModel.from_pretrained(args.critic, dtype=getattr(torch, args.dtype))
    critic.to(resolve_device(args.device)).eval()
    gamma = critic.gamma
    tokenizer = load_tokenizer(args.tokenizer, [args.critic, critic.config.decoder_name_or_path])
    table = load_prompt_dataset(args.dataset, args.split, args.prompt_column)
    if args.max_samples is not None:
        table = table.select(range(min(args.max_samples, len(table))))
    _check_round_trip(tokenizer, list(table[args.prompt_column]), args.chat_template)
    lengths = predict_length(
        critic, tokenizer, table[args.prompt_column], args.batch_size, None if args.chat_template else False
    )
    table = table.add_column("predicted_length", [float(x) for x in lengths])
    table = table.add_column("predicted_value", [float(x) for x in length_to_value(lengths.double(), gamma)])
    summary = f"{len(table)} prompts, mean predicted length {float(lengths.mean()):.1f} tokens (value space, γ={gamma})"
    if args.lengths_column is not None:
        if args.lengths_column not in table.column_names:
            raise ValueError(f"dataset has no column {args.lengths_column!r}; its columns are {table.column_names}")
        truths = [
            float(value_space_length(torch.tensor([row] if isinstance(row, (int, float)) else row), gamma))
            for row in table[args.lengths_column]
        ]
        errors = [abs(float(p) - t) / max(t, 1e-9) for p, t in zip(lengths, truths, strict=True)]
        table = table.add_column("value_space_length", truths).add_column("relative_error", errors)
        summary += f"; MRE vs value-space ground truth {100 * sum(errors) / len(errors):.1f}%"
    _write_table(table, args.output_file)
    print(summary)
    print(f"predictions written to {args.output_file}")
