"""The ``lenvm-rl`` console entry point: one subcommand per job, each parsed from YAML + CLI the way TRL scripts are.

    lenvm-rl <subcommand> [--config recipe.yaml] [--field value ...]

Every subcommand's options are dataclass fields (``field(metadata={"help": ...})``); a recipe YAML sets their
defaults and command-line flags override it. A YAML key that no dataclass has is an error, not ignored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["main", "SUBCOMMANDS"]


@dataclass
class MakeTinyModelArguments:
    """Write the built-in tiny causal LM and its tokenizer to a directory (no network needed)."""

    output_dir: str = field(metadata={"help": "Directory to write the model and tokenizer to."})
    architecture: str = field(default="llama", metadata={"help": "Backbone architecture: llama, qwen2 or gpt2."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    num_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    seed: int = field(default=0, metadata={"help": "Seed of the random initialization."})


@dataclass
class InitCriticArguments:
    """Build a LenVM critic (new value head) on a decoder backbone, or import an upstream LenVM checkpoint."""

    backbone: str = field(
        metadata={"help": "Hub name or local directory of the decoder backbone (a causal LM is fine)."}
    )
    output_dir: str = field(metadata={"help": "Directory to save the critic to (safetensors + config.json)."})
    gamma: float | None = field(
        default=None, metadata={"help": "Discount γ in (0, 1); leave unset to choose it at training time."}
    )
    upstream: bool = field(
        default=False,
        metadata={
            "help": "Treat `backbone` as an upstream LenVM checkpoint with value_head.safetensors (needs gamma)."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Backbone dtype: float32, bfloat16 or float16."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modeling code from the hub."})


def _make_tiny_model(args: MakeTinyModelArguments) -> None:
    from .tiny import save_tiny_causal_lm

    path = save_tiny_causal_lm(
        args.output_dir, args.architecture, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers
    )
    print(f"tiny {args.architecture} causal LM and tokenizer written to {path}")


def _init_critic(args: InitCriticArguments) -> None:
    import torch

    from .modeling import LengthValueModel

    dtype = getattr(torch, args.dtype)
    if args.upstream:
        if args.gamma is None:
            raise ValueError("--upstream needs --gamma: upstream LenVM checkpoints do not store γ")
        critic = LengthValueModel.from_upstream(
            args.backbone, gamma=args.gamma, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
    else:
        critic = LengthValueModel.from_backbone(
            args.backbone, gamma=args.gamma, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
    critic.save_pretrained(args.output_dir)
    print(f"critic saved to {args.output_dir} (gamma={critic.config.gamma})")


@dataclass(frozen=True)
class Subcommand:
    help: str
    dataclasses: tuple[type, ...]
    run: Callable[..., Any]


SUBCOMMANDS: dict[str, Subcommand] = {
    "make-tiny-model": Subcommand(MakeTinyModelArguments.__doc__, (MakeTinyModelArguments,), _make_tiny_model),
    "init-critic": Subcommand(InitCriticArguments.__doc__, (InitCriticArguments,), _init_critic),
}


def end_job(trainer: Any) -> None:
    """End a training job the way TRL's scripts do: wait for every process, then finish the trackers and destroy the
    process group (``Trainer.end``). Leaving the group to interpreter shutdown lets one rank tear down while another
    is still in a collective, which intermittently aborts two-process runs after they have saved."""
    trainer.accelerator.wait_for_everyone()
    trainer.end()


def register(name: str, help: str, dataclasses: tuple[type, ...], run: Callable[..., Any]) -> None:
    """Add a subcommand (used by the modules that implement later jobs)."""
    SUBCOMMANDS[name] = Subcommand(help, dataclasses, run)


def _load_subcommands() -> None:
    # Job modules register themselves on import; importing them lazily keeps `lenvm-rl --help` fast.
    import importlib

    for module in ("lenvm_rl.rollout", "lenvm_rl.critic_training", "lenvm_rl.evaluation", "lenvm_rl.grpo",
                   "lenvm_rl.ppo", "lenvm_rl.decoding", "lenvm_rl.demo"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def _usage() -> str:
    lines = ["usage: lenvm-rl <subcommand> [--config recipe.yaml] [options]", "", "subcommands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, command in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {command.help.strip().splitlines()[0]}")
    lines.append("")
    lines.append("Run `lenvm-rl <subcommand> --help` for the options of one subcommand.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_subcommands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"lenvm-rl: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from trl import TrlParser

    command = SUBCOMMANDS[name]
    parser = TrlParser(command.dataclasses, prog=f"lenvm-rl {name}", description=command.help)
    try:
        parsed = parser.parse_args_and_config(rest)
        command.run(*parsed)
    except (ValueError, KeyError, FileNotFoundError) as error:
        # Bad input is the user's to fix: show the message, not a traceback (LENVM_RL_DEBUG=1 shows it).
        if os.environ.get("LENVM_RL_DEBUG"):
            raise
        print(f"lenvm-rl {name}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
