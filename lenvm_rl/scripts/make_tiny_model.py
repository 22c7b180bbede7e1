"""``lenvm-rl make-tiny-model``: write the built-in tiny causal LM and its tokenizer to a directory."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MakeTinyModelArguments", "main"]


@dataclass
class MakeTinyModelArguments:
    """Write the built-in tiny causal LM and its tokenizer to a directory (no network needed)."""

    output_dir: str = field(metadata={"help": "Directory to write the model and tokenizer to."})
    architecture: str = field(default="llama", metadata={"help": "Backbone architecture: llama, qwen2 or gpt2."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    num_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialization."})


DATACLASSES = (MakeTinyModelArguments,)


def main(args: MakeTinyModelArguments) -> None:
    from ..tiny import save_tiny_causal_lm

    path = save_tiny_causal_lm(
        args.output_dir, args.architecture, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers
    )
    print(f"tiny {args.architecture} causal LM and tokenizer written to {path}")
