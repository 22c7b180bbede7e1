"""The ``lenvm-rl`` console entry point: dispatch only.

    lenvm-rl <subcommand> [--config recipe.yaml] [--field value ...]

Each subcommand is a module of :mod:`lenvm_rl.scripts` holding its argument dataclasses (``DATACLASSES``) and
``main``; it is imported only when that subcommand runs, so ``lenvm-rl --help`` imports neither TRL nor torch. A
recipe YAML sets the dataclasses' defaults and command-line flags override it (TRL's ``TrlParser``); a YAML key that no
dataclass has is an error, not ignored. Bad input (``ValueError``, ``KeyError``, ``FileNotFoundError``) exits with 2
and one line naming the problem; ``LENVM_RL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "SUBCOMMANDS"]

# name → (module under lenvm_rl.scripts, one-line help). The help lives here so that listing needs no import.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny-model": ("make_tiny_model", "Write the built-in tiny causal LM and its tokenizer (no network needed)."),
    "init-critic": ("init_critic", "Build a LenVM critic on a decoder backbone, or import an upstream checkpoint."),
    "fit-critic": ("fit_critic", "One command: rollouts of a policy → a LenVM critic (γ auto) → its held-out "
                                 "evaluation, resumable."),
    "fit-task-critic": ("fit_task_critic", "A frozen task critic for GRPO's per-token task credit, fitted to a "
                                           "policy's rollouts and evaluated held out."),
    "rollout": ("rollout", "Sample completions from a policy for critic training (resumable, split by prompt)."),
    "train-critic": ("train_critic", "Train a LenVM critic on rollouts (token-level loss, γ auto, LoRA, DeepSpeed)."),
    "eval-critic": ("eval_critic", "Evaluate a critic on held-out rollouts: MRE vs a constant baseline, plots."),
    "grpo": ("grpo", "GRPO with a LenVM critic (token-level length advantage), TRL-style recipe."),
    "ppo": ("ppo", "Critic-based PPO (task critic GAE) with an optional LenVM length term, TRL-style recipe."),
    "predict-length": ("predict_length", "Predict each prompt's completion length at the prompt boundary."),
    "eval-length-control": ("eval_length_control", "Guided vs plain generation under length constraints "
                                                   "(LIFEBench score)."),
    "study": ("study", "Compare length methods fairly: frontiers, seeds, bootstrap intervals, report and plots."),
    "preregister": ("preregister", "Pick a confirmatory study's headline pair from a finished sweep by a fixed rule."),
    "demo": ("demo", "The concise-reasoning demo: a small fixed instance of the length-method study."),
    "import-gguf": ("import_gguf", "Convert a GGUF checkpoint (or a packaged one) into a transformers directory."),
}


def _usage() -> str:
    lines = ["usage: lenvm-rl <subcommand> [--config recipe.yaml] [options]", "", "subcommands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run `lenvm-rl <subcommand> --help` for the options of one subcommand.")
    return "\n".join(lines)


def _field_owner(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO that declares field ``name`` last (a subclass redeclaring it owns it)."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def _own_help(name: str, description: str, dataclasses: Sequence[type]) -> str:
    """``--help`` of a job: the project's own options (a few dozen lines), and a count of the TRL/transformers
    options inherited by its configs, which ``--help-all`` lists (TRL's GRPOConfig alone has hundreds)."""
    import dataclasses as dc

    lines = [f"usage: lenvm-rl {name} [--config recipe.yaml] [--option value ...]", "", description, "",
             "options of lenvm_rl:"]
    inherited: dict[str, int] = {}
    for cls in dataclasses:
        for f in dc.fields(cls):
            owner = _field_owner(cls, f.name)
            if not owner.__module__.startswith("lenvm_rl"):
                inherited[owner.__name__] = inherited.get(owner.__name__, 0) + 1
                continue
            default = f.default if f.default is not dc.MISSING else (
                "(required)" if f.default_factory is dc.MISSING else f.default_factory())
            lines.append(f"  --{f.name} (default: {default!r})")
            lines.append(f"      {f.metadata.get('help', '')}")
    if inherited:
        counted = ", ".join(f"{count} of {owner}" for owner, count in inherited.items())
        lines += ["", f"Inherited options ({counted}): `lenvm-rl {name} --help-all` lists every one."]
    return "\n".join(lines)


def _check_recipe_keys(argv: Sequence[str], dataclasses: Sequence[type]) -> None:
    """Refuse a ``--config`` recipe key that no dataclass of the job has, naming the nearest field, before any field
    is parsed (so that a typo is reported as a typo, not as whatever check a misread value trips first)."""
    import dataclasses as dc
    import difflib

    if "--config" not in argv:
        return
    index = list(argv).index("--config")
    if index + 1 >= len(argv):
        return
    path = argv[index + 1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe {path} does not exist")
    import yaml

    with open(path, encoding="utf-8") as handle:
        recipe = yaml.safe_load(handle) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of field: value, got {type(recipe).__name__}")
    known = {f.name for cls in dataclasses for f in dc.fields(cls)}
    for key in recipe:
        if key in known or key == "env":  # TrlParser reads `env` itself
            continue
        nearest = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
        raise ValueError(f"{path}: unknown field {key!r}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"lenvm-rl: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_text = SUBCOMMANDS[name]
    job = importlib.import_module(f"lenvm_rl.scripts.{module_name}")
    from trl import TrlParser

    description = (job.DATACLASSES[0].__doc__ or help_text).strip()
    if "--help-all" in rest:
        rest = ["--help" if arg == "--help-all" else arg for arg in rest]
    elif "-h" in rest or "--help" in rest:
        print(_own_help(name, description, job.DATACLASSES))
        return 0
    parser = TrlParser(job.DATACLASSES, prog=f"lenvm-rl {name}", description=description)
    try:
        _check_recipe_keys(rest, job.DATACLASSES)
        parsed = parser.parse_args_and_config(rest)
        job.main(*parsed)
    except (ValueError, KeyError, FileNotFoundError) as error:
        # Bad input is the user's to fix: show the message, not a traceback.
        if os.environ.get("LENVM_RL_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"lenvm-rl {name}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
