"""``lenvm-rl make-tiny-model``: write the built-in tiny causal LM and its tokenizer to a directory, optionally
fitted to prompt/completion pairs (``--fit_data``) so that its completions depend on the prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MakeTinyModelArguments", "main"]


@dataclass
class MakeTinyModelArguments:
    """Write the built-in tiny causal LM and its tokenizer to a directory (no network needed); with --fit_data, fit
    it to prompt/completion pairs first (a few hundred SFT steps) so that its completion lengths depend on the
    prompt."""

    output_dir: str = field(metadata={"help": "Directory to write the model and tokenizer to."})
    architecture: str = field(default="llama", metadata={"help": "Backbone architecture: llama, qwen2 or gpt2."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    num_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialization (and of the fit)."})
    fit_data: str | None = field(
        default=None,
        metadata={"help": "Optional local json/jsonl/parquet/csv file of prompt/completion string pairs to fit the "
                          "model to with TRL's SFTTrainer (e.g. recipes/data/tiny_sft.jsonl); none: random weights, "
                          "whose completion lengths do not depend on the prompt."},
    )
    fit_steps: int = field(default=300, metadata={"help": "SFT optimizer steps when fitting."})
    fit_learning_rate: float = field(default=3e-3, metadata={"help": "SFT learning rate (cosine schedule)."})
    fit_batch_size: int = field(default=16, metadata={"help": "SFT examples per step."})
    prompt_column: str = field(default="prompt", metadata={"help": "Prompt column of fit_data."})
    completion_column: str = field(default="completion", metadata={"help": "Completion column of fit_data."})


DATACLASSES = (MakeTinyModelArguments,)


def main(args: MakeTinyModelArguments) -> None:
    from ..data import check_local_path
    from ..tiny import fit_causal_lm, save_tiny_causal_lm

    if args.fit_data is not None:
        check_local_path(args.fit_data, "fit_data", hub=False)
        if args.fit_steps < 1:
            raise ValueError(f"fit_steps must be ≥ 1, got {args.fit_steps}")
    path = save_tiny_causal_lm(
        args.output_dir, args.architecture, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers
    )
    if args.fit_data is None:
        print(f"tiny {args.architecture} causal LM (random weights) and tokenizer written to {path}")
        return
    fit_causal_lm(path, args.fit_data, steps=args.fit_steps, learning_rate=args.fit_learning_rate,
                  batch_size=args.fit_batch_size, seed=args.seed, prompt_column=args.prompt_column,
                  completion_column=args.completion_column)
    print(f"tiny {args.architecture} causal LM fitted to {args.fit_data} ({args.fit_steps} steps) and tokenizer "
          f"written to {path}")
